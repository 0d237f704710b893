"""Partial labels: unlabelled pixels (ignore value) count in no loss, no metric, no sampling statistic."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.core.labels import IGNORE_INDEX
from biomedseg.io.masks import Palette, discover_palette, infer_ignore_value, read_mask
from biomedseg.losses.build import build_loss
from biomedseg.losses.registry import list_losses
from biomedseg.metrics.pixel import confusion_matrix, image_dice, scores_from_confusion
from conftest import TINY


def _batch(seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 16, 16, generator=g)
    target = torch.randint(0, k, (2, 16, 16), generator=g)
    target[:, :6] = IGNORE_INDEX  # a band of unlabelled pixels
    target[1, 10, 3] = IGNORE_INDEX
    return logits, target


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_ignores_unlabelled_pixels_exactly(name):
    logits, target = _batch()
    loss = build_loss(name, 3)
    other = logits.clone()
    unlabelled = (target == IGNORE_INDEX).unsqueeze(1).expand_as(other)
    other[unlabelled] = torch.randn(int(unlabelled.sum())) * 10  # change only what nobody labelled
    a, b = loss(logits, target), loss(other, target)
    assert torch.isfinite(a) and a.item() == b.item()


def test_cross_entropy_on_labelled_pixels_equals_torch_ignore_index():
    logits, target = _batch(1)
    ours = build_loss("ce", 3)(logits, target)
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ours, ref)


def test_all_unlabelled_batch_gives_zero_loss_with_a_gradient():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = build_loss("dice+ce", 2)(logits, torch.full((1, 4, 4), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_metrics_ignore_unlabelled_pixels():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (20, 20)).astype(np.uint8)
    target[:5] = IGNORE_INDEX
    pred = rng.integers(0, 3, (20, 20)).astype(np.uint8)
    other = pred.copy()
    other[:5] = (other[:5] + 1) % 3  # differs only where nothing is labelled
    cm_a, cm_b = confusion_matrix(pred, target, 3), confusion_matrix(other, target, 3)
    assert np.array_equal(cm_a, cm_b) and cm_a.sum() == 15 * 20
    assert scores_from_confusion(cm_a, ["bg", "a", "b"], 0) == scores_from_confusion(cm_b, ["bg", "a", "b"], 0)
    assert image_dice(pred, target, 3, 0) == image_dice(other, target, 3, 0)


def _save(path: Path, arr) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)
    return path


def test_read_mask_maps_the_ignore_value_and_discovery_leaves_it_out(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[2:4, 2:4], m[5:, 5:], m[0] = 1, 2, 255
    p = _save(tmp_path / "m.png", m)
    assert infer_ignore_value([p]) == (255,)
    pal = discover_palette([p], ignore=(255,))
    assert pal.values == [(0,), (1,), (2,)] and pal.ignore == (255,)
    assert Palette.from_json(pal.to_json()) == pal
    mask, snapped = read_mask(p, pal, strict_index=True)
    assert snapped == 0 and (mask[0] == IGNORE_INDEX).all() and mask[2, 2] == 1 and mask[6, 6] == 2


@pytest.mark.parametrize(
    "values,expected", [((0, 255), None), ((0, 128, 255), None), ((0, 1, 255), (255,)), ((0, 1, 2), None)]
)
def test_ignore_is_inferred_only_where_unambiguous(tmp_path, values, expected):
    m = np.zeros((4, 12), np.uint8)
    for i, v in enumerate(values):
        m[:, 4 * i : 4 * i + 4] = v
    assert infer_ignore_value([_save(tmp_path / "m.png", m)]) == expected


def test_resampled_mask_keeps_unlabelled_areas_and_thin_scribbles():
    from biomedseg.transforms.resample import resample_mask

    m = np.zeros((40, 40), np.uint8)
    m[:, 20:] = IGNORE_INDEX
    m[5:15, 5:15] = 1
    out = resample_mask(m, (20, 20), 2, 0)
    assert (out[:, 11:] == IGNORE_INDEX).all() and (out[:, :10] != IGNORE_INDEX).all() and (out == 1).any()
    scribble = np.full((90, 90), IGNORE_INDEX, np.uint8)
    scribble[40:43, 10:80] = 1  # a 3 px stroke, shrunk by 3: still one row of labelled pixels
    scribble[70:73, 10:80] = 0
    small = resample_mask(scribble, (30, 30), 2, 0)
    assert (small == 1).sum() >= 20 and (small == 0).sum() >= 20


def test_random_windows_of_a_partial_image_hold_labelled_pixels():
    from biomedseg.data.datasets import CachedSample, PatchSampler, index_class_pixels
    from biomedseg.transforms.normalize import Normalizer

    mask = np.full((512, 512), IGNORE_INDEX, np.uint8)
    mask[400:410, 30:60] = 0
    mask[100:104, 300:340] = 1
    s = CachedSample(
        "a", np.zeros((512, 512, 1), np.uint8), mask, index_class_pixels(mask, 2, np.random.default_rng(0))
    )
    sampler = PatchSampler([s], 64, 2, Normalizer([0.0], [1.0]), lambda x, y, rng: (x, y), fg_oversample=0.0)
    labelled = [(sampler.patch_pair()[1] != IGNORE_INDEX).any() for _ in range(50)]
    assert all(labelled)


def _partial_data(src: Path, dst: Path) -> Path:
    """The synthetic data with the right third of every training mask unlabelled (255)."""
    shutil.copytree(src, dst)
    for p in sorted((dst / "masks").glob("*.png")):
        m = np.array(Image.open(p))
        m[:, 2 * m.shape[1] // 3 :] = IGNORE_INDEX
        Image.fromarray(m).save(p)
    return dst


def _cli(*args):
    r = subprocess.run(
        [sys.executable, "-m", "biomedseg.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    r.output, r.exit_code = r.stdout + r.stderr, r.returncode
    return r


@pytest.mark.slow
def test_training_on_partial_labels_reports_the_ignore_value(synthetic_data, tmp_path):
    from biomedseg.training.api import train
    from biomedseg.workflows.evaluation import evaluate

    data = _partial_data(synthetic_data, tmp_path / "partial")
    run = train(data, tmp_path / "run", epochs=1, seed=0, quiet=True, **TINY)
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["ignore_value"]["value"] == 255 and plan["ignore_value"]["reason"].startswith("inferred")
    assert 0.5 < plan["fingerprint"]["labelled_fraction"] < 0.8
    assert json.loads((run / "dataset.json").read_text())["palette"]["ignore"] == [255]
    m = evaluate(run, data, tmp_path / "eval", split="test")
    total = sum(m["per_class"][c]["tp"] + m["per_class"][c]["fn"] for c in m["per_class"])
    n_pixels = sum(
        np.array(Image.open(p)).size
        for p in (data / "masks").glob("*.png")
        if p.stem in json.loads((data / "dataset.json").read_text())["split"]["test"]
    )
    assert total < 0.7 * n_pixels  # the unlabelled third is in no count


@pytest.mark.slow
def test_bad_partial_label_inputs_are_one_line_errors(synthetic_data, tmp_path):
    data = _partial_data(synthetic_data, tmp_path / "partial")
    first = sorted((data / "masks").glob("*.png"))[0]
    m = np.array(Image.open(first))
    Image.fromarray(np.full_like(m, IGNORE_INDEX)).save(first)
    out = tmp_path / "run"
    r = _cli("train", data, "--out", out, "--epochs", "1")
    assert r.exit_code == 2 and "every pixel is unlabelled" in r.output and "Traceback" not in r.output
    assert not out.exists() or not any(out.iterdir())
    r = _cli("train", synthetic_data, "--out", tmp_path / "run2", "--epochs", "1", "--set", "ignore_value=1")
    assert r.exit_code == 2 and "also a class value" in r.output


def test_colliding_ignore_value_is_refused_for_configured_classes(tmp_path):
    from biomedseg.runs.config import TrainConfig
    from biomedseg.training.data_setup import _classes_and_palette

    p = _save(tmp_path / "m.png", np.array([[0, 1], [2, 2]]))
    with pytest.raises(UserError, match="also a class value .*'cell'"):
        _classes_and_palette(TrainConfig(classes=["background", "cell", "nucleus"]), {}, [p], (1,))


def test_audit_reports_the_unlabelled_value_and_what_is_labelled(synthetic_data, tmp_path):
    from biomedseg.audit.run import run_audit

    data = _partial_data(synthetic_data, tmp_path / "partial")
    masks = sorted((data / "masks").glob("*.png"))
    Image.fromarray(np.full_like(np.array(Image.open(masks[0])), IGNORE_INDEX)).save(masks[0])
    result = run_audit(data)
    u = result["masks"]["unlabelled"]
    assert u["value"] == 255 and u["reason"].startswith("inferred")
    assert u["fully_unlabelled"] == [masks[0].stem]
    assert 0.5 < u["labelled_fraction"] < 0.8 and u["partial_masks"] == len(masks) - 1
    assert result["masks"]["classes"] == ["background", "cell", "filament"]  # 255 is no class
    codes = {f["code"]: f for f in result["findings"]}
    assert "partial_labels" in codes and "fully_unlabelled_masks" in codes
    assert "mask_outliers" not in codes and not result["masks"]["mask_outliers"]
    assert masks[0].stem not in result["masks"]["empty_mask_ids"]


def test_missing_masks_are_unlabelled_only_when_allowed(synthetic_data, tmp_path):
    from biomedseg.runs.config import TrainConfig
    from biomedseg.training.data_setup import prepare_data

    data = tmp_path / "mixed"
    shutil.copytree(synthetic_data, data)
    gone = sorted((data / "masks").glob("*.png"))[0]
    gone.unlink()
    with pytest.raises(UserError, match="no mask"):
        prepare_data(TrainConfig(), data)
    setup = prepare_data(TrainConfig(allow_unlabelled=True), data)
    ids = [s.id for s in setup.samples]
    assert gone.stem not in ids and len(ids) == len(list((data / "masks").glob("*.png")))
    assert gone.stem not in sum(setup.split.values(), [])


def test_error_overlay_leaves_unlabelled_pixels_grey():
    from biomedseg.core.render import error_overlay

    image = np.full((4, 4), 100, np.uint8)
    target = np.full((4, 4), IGNORE_INDEX, np.uint8)
    target[0] = 1
    pred = np.ones((4, 4), np.uint8)
    out = error_overlay(image, pred, target, 1)
    assert (out[1:] == 100).all() and not (out[0] == 100).all()
