"""Post-processing steps, the config chain, tuning on the validation split, integration."""

import numpy as np
import pytest
import torch
from PIL import Image

from biomedseg.postprocess.ops import (
    ClassSteps,
    GatingConfig,
    PostprocessConfig,
    WatershedConfig,
    apply_postprocess,
    binary_close,
    combine_instances,
    decide,
    fill_holes,
    keep_largest,
    load_postprocess,
    remove_small_objects,
    save_postprocess,
    watershed_split,
)
from conftest import write_fake_run


def two_discs(shape=(100, 150), r=25, gap=1.8):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    c1, c2 = (50, 45), (50, 45 + gap * r)
    return ((yy - c1[0]) ** 2 + (xx - c1[1]) ** 2 < r * r) | ((yy - c2[0]) ** 2 + (xx - c2[1]) ** 2 < r * r)


def test_watershed_splits_two_touching_discs():
    m = two_discs()
    from scipy import ndimage as ndi

    assert ndi.label(m)[1] == 1  # one connected object
    lab = watershed_split(m, marker_threshold=0.5)
    assert lab.dtype == np.int32 and lab.max() == 2
    assert np.array_equal(lab > 0, m)
    sizes = np.bincount(lab.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) < 0.05 * sizes.sum()
    # left and right halves get different labels
    assert lab[50, 45] != lab[50, 90] and lab[50, 45] > 0 and lab[50, 90] > 0


def test_small_objects_holes_largest_closing():
    m = np.zeros((60, 60), bool)
    m[10:40, 10:40] = True
    m[20:23, 20:23] = False  # a 9-pixel hole
    m[30:36, 30:33] = False  # an 18-pixel hole
    m[50:52, 50:52] = True  # a 4-pixel object
    m[0:3, 55:60] = True  # 15 pixels touching the border
    assert remove_small_objects(m, 5).sum() == m.sum() - 4
    assert remove_small_objects(m, 16).sum() == m.sum() - 4 - 15
    assert fill_holes(m, 10).sum() == m.sum() + 9
    assert fill_holes(m, -1).sum() == m.sum() + 9 + 18
    assert fill_holes(m, 0).sum() == m.sum()
    big = keep_largest(m)
    assert big.sum() == 30 * 30 - 9 - 18 and not big[50, 50]
    gap = np.zeros((20, 20), bool)
    gap[5:15, 2:9] = True
    gap[5:15, 10:18] = True
    assert binary_close(gap, 1)[10, 9] and not gap[10, 9]
    edge = np.zeros((10, 10), bool)
    edge[:, :4] = True
    assert np.array_equal(binary_close(edge, 2), edge)  # no erosion from the image border


def test_thresholds_binary_and_multiclass():
    p1 = np.array([0.2, 0.4, 0.6], np.float32)
    proba = np.stack([1 - p1, p1])[:, None, :]
    assert decide(proba, {}).tolist() == [[0, 0, 1]]
    assert decide(proba, {1: 0.3}).tolist() == [[0, 1, 1]]
    assert decide(proba, {1: 0.65}).tolist() == [[0, 0, 0]]
    # multiclass: scaling by (1 - t) / t; t = 0.5 is plain argmax
    p = np.array([[0.5, 0.4], [0.3, 0.35], [0.2, 0.25]], np.float32)[:, None, :]
    assert decide(p, {}).tolist() == [[0, 0]]
    assert decide(p, {1: 0.5}).tolist() == [[0, 0]]
    assert decide(p, {1: 0.3}).tolist() == [[1, 1]]
    assert decide(p, {1: 0.3, 2: 0.1}).tolist() == [[2, 2]]


def test_gating_and_chain():
    m = two_discs()
    proba = np.stack([1 - 0.9 * m, 0.9 * m]).astype(np.float32)
    cfg = PostprocessConfig(gating=GatingConfig(min_total_area=m.sum() + 1))
    mask, inst = apply_postprocess(proba, cfg, ["background", "cell"], 0)
    assert mask.sum() == 0 and inst is None
    cfg = PostprocessConfig(gating=GatingConfig(min_max_probability=0.95))
    assert apply_postprocess(proba, cfg)[0].sum() == 0
    cfg = PostprocessConfig(gating=GatingConfig(min_max_probability=0.85, min_total_area=10))
    assert apply_postprocess(proba, cfg)[0].sum() == m.sum()
    # watershed on a class gives instances in addition to the semantic mask
    speck = proba.copy()
    speck[:, 5, 5] = [0.1, 0.9]
    cfg = PostprocessConfig(classes={"cell": ClassSteps(min_object_area=5, watershed=WatershedConfig())})
    mask, inst = apply_postprocess(speck, cfg, ["background", "cell"], 0)
    assert mask[5, 5] == 0 and np.array_equal(mask == 1, m)
    assert set(inst) == {1} and inst[1].max() == 2
    mask, inst = apply_postprocess(speck, None, ["background", "cell"], 0, instances=True)
    assert inst[1].max() == 2 and mask[5, 5] == 1  # connected components, speck kept
    labels = combine_instances({1: inst[1], 2: inst[1]}, mask.shape)
    assert labels.max() == 4
    with pytest.raises(Exception, match="nucleus"):
        apply_postprocess(proba, PostprocessConfig(classes={"nucleus": ClassSteps()}), ["background", "cell"], 0)


def test_config_yaml_round_trip(tmp_path):
    cfg = PostprocessConfig(
        classes={"cell": ClassSteps(threshold=0.3, closing_radius=2, fill_holes_area=-1)},
        gating=GatingConfig(min_total_area=50),
    )
    path = save_postprocess(cfg, tmp_path)
    assert path.name == "postprocess.yaml"
    assert load_postprocess(tmp_path) == cfg
    assert load_postprocess(tmp_path / "nowhere") is None
    (tmp_path / "postprocess.yaml").write_text("classes: {cell: {threshold: 2}}\n")
    with pytest.raises(Exception, match="threshold"):
        load_postprocess(tmp_path)
    assert PostprocessConfig().is_identity and not cfg.is_identity


# ---------------------------------------------------------------- tuning on a synthetic run

AFFINE = "_test_affine_logits"


@pytest.fixture
def affine_run(tmp_path):
    """A run whose 'network' is fixed: foreground logit = z - 1.5 (z = normalised intensity), so
    a 150-intensity object gets p = 0.38 (missed at 0.5) and 200-intensity specks p = 0.62."""
    from torch import nn

    from biomedseg.models import create_model, registry

    def factory(in_channels, n_classes, **_):
        conv = nn.Conv2d(in_channels, n_classes, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[1, 0] = 1.0
            conv.bias[1] = -1.5
        return conv

    registry.register(AFFINE, multiple=1, description="test")(factory)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    ids = []
    for i in range(6):
        img = np.full((64, 64), 50, np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        if i < 4:
            y, x = rng.integers(5, 35, size=2)
            img[y : y + 20, x : x + 20] = 150
            mask[y : y + 20, x : x + 20] = 1
        for _ in range(3):  # bright specks: false positives
            y, x = rng.integers(0, 62, size=2)
            if not mask[max(0, y - 2) : y + 4, max(0, x - 2) : x + 4].any():
                img[y : y + 2, x : x + 2] = 200
        Image.fromarray(img).save(data / "images" / f"s{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"s{i}.png")
        ids.append(f"s{i}")
    run = write_fake_run(
        tmp_path / "run", AFFINE, create_model(AFFINE, 1, 2).state_dict(), data, ids, patch_size=64, batch_size=2
    )
    yield run, data
    registry._REGISTRY.pop(AFFINE, None)


def test_tuning_improves_dice_and_is_applied(affine_run, tmp_path):
    from biomedseg.inference.predict.batch import predict
    from biomedseg.workflows.evaluation import evaluate
    from biomedseg.workflows.tune_postprocess import tune_postprocess

    run, data = affine_run
    cfg = tune_postprocess(run, split="val")
    t = cfg.tuning
    assert t["n_images"] == 6 and t["split"] == "val"
    assert t["dice_tuned"] > t["dice_argmax"] + 0.3
    assert t["dice_tuned"] > 0.99
    assert "image_dice_with_gating" in t and "image_dice_without_gating" in t
    steps = cfg.classes["cell"]
    assert steps.threshold is not None and steps.threshold < 0.38
    assert 4 < steps.min_object_area <= 400
    assert load_postprocess(run) == cfg  # written to RUN/postprocess.yaml

    with_pp = evaluate(run, data, tmp_path / "ev1", split="val", overlays=False, quiet=True)
    without = evaluate(run, data, tmp_path / "ev2", split="val", overlays=False, quiet=True, postprocess=False)
    assert with_pp["dice"] > without["dice"] + 0.3
    assert with_pp["postprocess"]["classes"]["cell"]["threshold"] == steps.threshold
    assert without["postprocess"] is None

    s = predict(
        run, [data / "images"], tmp_path / "pred", overlays=False, rle=tmp_path / "sub.csv", instances=True, quiet=True
    )
    assert len(s.done) == 6
    assert (tmp_path / "pred" / "s0_instances.tif").is_file()
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels"
    # 4 images with one object each, 2 negatives with an empty row
    assert len(lines) == 1 + 6 and sum(1 for line in lines[1:] if line.endswith(",")) == 2


def test_gate_tuning_prefers_empty_masks_for_negatives():
    from biomedseg.workflows.tune_postprocess import _Cached, _tune_gate

    cache, masks = [], []
    for i in range(6):
        target = np.zeros((32, 32), np.uint8)
        proba = np.zeros((2, 32, 32), np.float16)
        proba[0] = 1
        pred = np.zeros((32, 32), np.uint8)
        if i < 3:  # positives: confident, large
            target[5:25, 5:25] = pred[5:25, 5:25] = 1
            proba[1, 5:25, 5:25], proba[0, 5:25, 5:25] = 0.9, 0.1
        else:  # negatives with a weak false-positive blob
            pred[2:6, 2:6] = 1
            proba[1, 2:6, 2:6], proba[0, 2:6, 2:6] = 0.55, 0.45
        cache.append(_Cached(str(i), proba, target, 1))
        masks.append(pred)
    gate, without, with_gate = _tune_gate(cache, masks, [1], 0)
    assert gate.active and without == pytest.approx(0.5) and with_gate == pytest.approx(1.0)
    assert 16 < gate.min_total_area <= 400 or 0.55 < gate.min_max_probability <= 0.9


def test_reliable_gain_needs_a_consistent_improvement():
    """Bootstrap adoption: a gain carried by one image is rejected, a gain on most images kept."""
    from biomedseg.workflows.tune_postprocess import reliable_gain

    rng = np.random.default_rng(0)
    before = rng.uniform(0.6, 0.9, 10)
    one_lucky = before.copy()
    one_lucky[0] += 0.1
    one_lucky[1:] -= 0.005
    assert not reliable_gain(before, one_lucky, pooled=False)
    assert reliable_gain(before, before + 0.02, pooled=False)
    # pooled counts: (n_images, n_fg, 3) tp, fp, fn
    counts = np.tile(np.array([[[80, 20, 20]]]), (8, 1, 1))
    better = np.tile(np.array([[[85, 15, 15]]]), (8, 1, 1))
    assert reliable_gain(counts, better)
    assert not reliable_gain(better, counts)
