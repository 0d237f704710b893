"""The optional image-level classifier head (``--classifier-head``), end to end: the default
U-Net's head, its training loss, the predictor's image probability, the empty-mask gate
(``gating.min_classifier_probability``) in post-processing, tuning, predict and evaluate, and the
command line. Tiny synthetic data and networks keep every test fast on a busy CPU."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from biomedseg.models import create_model, registry
from biomedseg.models.heads import TappedClassifier, classifier_of, classify, find_classifier, foreground_present
from conftest import write_fake_run

TINY_UNET = {"depth": 3, "base_channels": 4, "num_res_units": 0}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _tiny_unet_with_head():
    return create_model("unet", 1, 2, classifier_head=True, **TINY_UNET)


# ---------------------------------------------------------------- the default U-Net's head


def test_unet_head_exists_and_classifier_of_finds_it():
    model = _tiny_unet_with_head()
    head = classifier_of(model)  # through the registry's PadToMultiple
    assert isinstance(head, TappedClassifier)
    assert find_classifier(create_model("unet", 1, 2, **TINY_UNET)) is None
    x = torch.randn(2, 1, 37, 45)  # odd size: padded to the multiple and cropped back
    seg = model(x)
    assert seg.shape == (2, 2, 37, 45)
    assert head.class_logits.shape == (2,) and head.class_logits.dtype == torch.float32
    # the head sits on the bottleneck: channels of the deepest level
    assert head.head.fc.in_features == 2 * 4 * 2 ** (TINY_UNET["depth"] - 1)
    assert classify(model, x).shape == (2,)


def test_unet_head_state_dict_round_trip_and_inference_copy():
    from biomedseg.engine.sliding_window import optimize_for_inference

    model = _tiny_unet_with_head().eval()
    keys = list(model.state_dict())
    assert any(k.startswith("net.head.fc.") for k in keys)
    other = _tiny_unet_with_head().eval()
    other.load_state_dict(model.state_dict())  # strict: same keys, checkpoints load back
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        seg_a, seg_b = model(x), other(x)
        cls_a, cls_b = classifier_of(model).class_logits, classifier_of(other).class_logits
        fast = optimize_for_inference(other, "cpu", channels_last=True)  # deep copy, norms swapped
        seg_c = fast(x)
        cls_c = classifier_of(fast).class_logits
    torch.testing.assert_close(seg_a, seg_b)
    torch.testing.assert_close(cls_a, cls_b)
    torch.testing.assert_close(seg_c, seg_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cls_c, cls_a, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="torch built without gloo"
)
def test_unet_head_under_ddp(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(_tiny_unet_with_head())
        seg = ddp(torch.randn(2, 1, 32, 32))
        head = classifier_of(ddp)
        loss = seg.mean() + nn.functional.binary_cross_entropy_with_logits(head.class_logits, torch.ones(2))
        loss.backward()
        assert head.head.fc.weight.grad is not None and head.head.fc.weight.grad.abs().sum() > 0
    finally:
        ddp = None
        dist.destroy_process_group()


def test_foreground_present():
    y = torch.zeros(3, 4, 4, dtype=torch.int64)
    y[1, 0, 0] = 1
    y[2] = 1  # all class 1
    assert foreground_present(y, 0).tolist() == [0.0, 1.0, 1.0]
    assert foreground_present(y, 1).tolist() == [1.0, 1.0, 0.0]  # background = class 1
    assert foreground_present(y, None).tolist() == [0.0, 1.0, 1.0]


# ---------------------------------------------------------------- training step


def _trainer(model, weight: float):
    from biomedseg.losses.build import build_loss
    from biomedseg.runs.config import TrainConfig
    from biomedseg.training.trainer import Trainer

    cfg = TrainConfig(classifier_loss_weight=weight, device="cpu", channels_last=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # no momentum/decay: zero gradient = no change
    return Trainer(
        cfg,
        model,
        build_loss("dice+ce", 2, None),
        opt,
        None,
        None,
        [],
        None,
        2,
        ["background", "fg"],
        0,
        ".",
        torch.device("cpu"),
        "fp32",
        1,
        quiet=True,
    )


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 32, 32, generator=g)
    y = torch.zeros(4, 32, 32, dtype=torch.int64)
    y[0, 4:12, 4:12] = 1
    y[1, 20:30, 10:20] = 1  # patches 2, 3: empty
    return x, y


def test_train_step_trains_the_head_and_adds_the_bce_term():
    x, y = _batch()
    init = _tiny_unet_with_head().state_dict()
    results = {}
    for w in (0.0, 0.5):
        model = _tiny_unet_with_head()
        model.load_state_dict(init)
        trainer = _trainer(model, w)
        assert trainer.has_head
        before = classifier_of(model).head.fc.weight.detach().clone()
        torch.manual_seed(3)  # same dropout mask in the head for both weights
        total = trainer.train_step(x, y)
        head = classifier_of(model)
        expected_cls = float(
            nn.functional.binary_cross_entropy_with_logits(head.class_logits.detach(), foreground_present(y, 0))
        )
        results[w] = (total, trainer.last_step, head.head.fc.weight.detach() - before, expected_cls)
    total0, terms0, change0, _ = results[0.0]
    total1, terms1, change1, cls1 = results[0.5]
    assert terms1["cls_loss"] == pytest.approx(cls1, rel=1e-5)
    assert total1 == pytest.approx(terms1["seg_loss"] + 0.5 * terms1["cls_loss"], rel=1e-5)
    assert total0 == pytest.approx(terms0["seg_loss"], rel=1e-5)
    assert terms0["seg_loss"] == pytest.approx(terms1["seg_loss"], rel=1e-5)  # same weights, same batch
    assert total1 - total0 == pytest.approx(0.5 * cls1, rel=1e-4, abs=1e-6)
    assert change1.abs().sum() > 0  # the head learns
    assert change0.abs().sum() == 0  # weight 0: no gradient reaches it


def test_classifier_loss_weight_is_validated():
    from biomedseg.core.errors import UserError
    from biomedseg.runs.config import TrainConfig, build_config

    assert TrainConfig().classifier_loss_weight == 0.1
    with pytest.raises(UserError, match="classifier_loss_weight"):
        build_config({"classifier_loss_weight": -1})


# ---------------------------------------------------------------- the gate (pure function)


def test_gate_empties_masks_below_the_classifier_probability():
    from biomedseg.postprocess.ops import GatingConfig, PostprocessConfig, apply_postprocess

    proba = np.zeros((2, 24, 24), np.float32)
    proba[0] = 1.0
    proba[1, 5:15, 5:15], proba[0, 5:15, 5:15] = 0.95, 0.05  # a confident object
    cfg = PostprocessConfig(gating=GatingConfig(min_classifier_probability=0.4))
    assert cfg.gating.active and not cfg.is_identity and cfg.needs_whole_image
    assert PostprocessConfig.from_yaml(cfg.to_yaml()) == cfg
    low, inst = apply_postprocess(proba, cfg, background=0, image_probability=0.39, instances=True)
    assert not low.any() and not inst[1].any()
    high, _ = apply_postprocess(proba, cfg, background=0, image_probability=0.41)
    assert high.sum() == 100
    unknown, _ = apply_postprocess(proba, cfg, background=0, image_probability=None)  # no head: skipped
    assert unknown.sum() == 100
    off, _ = apply_postprocess(proba, PostprocessConfig(), background=0, image_probability=0.0)
    assert off.sum() == 100


def test_gate_tuning_uses_the_classifier_where_area_and_probability_cannot():
    """Negatives carry a false positive that looks exactly like the positives' objects: only the
    head's probability separates them."""
    from biomedseg.postprocess.gates import tune_gating
    from biomedseg.postprocess.scores import _Cached

    rng = np.random.default_rng(0)
    cache, masks = [], []
    for i in range(10):
        target = np.zeros((32, 32), np.uint8)
        proba = np.zeros((2, 32, 32), np.float16)
        proba[0] = 1
        pred = np.zeros((32, 32), np.uint8)
        pred[6:18, 6:18] = 1
        proba[1, 6:18, 6:18], proba[0, 6:18, 6:18] = 0.9, 0.1
        positive = i % 2 == 0
        if positive:
            target[6:18, 6:18] = 1
        p_img = rng.uniform(0.6, 0.95) if positive else rng.uniform(0.05, 0.4)
        cache.append(_Cached(str(i), proba, target, 1, p_img))
        masks.append(pred)
    adopted = {}
    gating, report = tune_gating(cache, masks, [1], 0, adopted)
    assert adopted["classifier_gating"] is True
    assert gating.min_total_area == 0 and gating.min_max_probability == 0
    neg = max(c.image_probability for c in cache[1::2])
    pos = min(c.image_probability for c in cache[::2])
    assert neg < gating.min_classifier_probability < pos
    assert report["classifier_head"] is True
    assert report["image_dice_with_classifier_gate"] > report["image_dice_without_classifier_gate"]
    assert report["image_dice_with_gating"] == report["image_dice_with_classifier_gate"]
    assert report["image_dice_without_gating"] == pytest.approx(0.5)
    # without a head (no image probabilities) the classifier step is skipped
    for c in cache:
        c.image_probability = None
    adopted = {}
    gating, report = tune_gating(cache, masks, [1], 0, adopted)
    assert "classifier_gating" not in adopted and "classifier_head" not in report
    assert gating.min_classifier_probability is None


# ---------------------------------------------------------------- integration: a fixed network

FIXED = "test-fixed-head"


def _fixed_factory(in_channels, n_classes, **_):
    """Segmentation logit of the foreground = clamp(z - 1.5, max=0.5) (z: normalised intensity),
    so every bright pixel gets the same probability; the head reads the unclamped z and says
    "foreground" where some pixel is brighter than z = 2.5 (a marker only positives carry)."""
    features = nn.Conv2d(1, 3, 1)
    out = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        for p in (*features.parameters(), *out.parameters()):
            p.zero_()
        features.weight[1, 0], features.bias[1] = 1.0, -1.5
        features.weight[2, 0] = 1.0
        out.weight[1, 1] = 1.0
    model = TappedClassifier(nn.Sequential(features, nn.Hardtanh(-3.0, 0.5), out), "0", 3)
    with torch.no_grad():  # pooled = [mean0, mean1, mean2, max0, max1, max2]
        model.head.fc.weight.zero_()
        model.head.fc.weight[0, 5] = 20.0
        model.head.fc.bias.fill_(-50.0)  # logit = 20 * (max(z) - 2.5)
    return model


@pytest.fixture
def fixed_run(tmp_path):
    """8 validation images with the same bright square: on positives it is the mask and holds a
    brighter marker pixel that only the head sees; on negatives it is a false positive."""
    registry.register(FIXED, multiple=1, description="test")(_fixed_factory)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    ids = []
    for i in range(8):
        img = np.full((48, 48), 50, np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        img[10 + i : 26 + i, 12:28] = 200
        if i % 2 == 0:
            mask[10 + i : 26 + i, 12:28] = 1
            img[15 + i, 17] = 255
        Image.fromarray(img).save(data / "images" / f"s{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"s{i}.png")
        ids.append(f"s{i}")
    run = write_fake_run(
        tmp_path / "run", FIXED, create_model(FIXED, 1, 2).state_dict(), data, ids, patch_size=32, batch_size=4
    )
    yield run, data
    registry._REGISTRY.pop(FIXED, None)


def test_tuned_classifier_gate_flows_through_predict_and_evaluate(fixed_run, tmp_path):
    from biomedseg.inference.predict.batch import predict
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image, read_raw
    from biomedseg.workflows.evaluation import evaluate
    from biomedseg.workflows.tune_postprocess import tune_postprocess

    run, data = fixed_run
    loaded = load_run(run, device="cpu")
    predictor = loaded.predictor()
    assert predictor.has_head
    probs = {}
    for i in range(8):
        predictor.predict_proba(loaded.normalizer(read_image(data / "images" / f"s{i}.png")))
        probs[i] = predictor.last_image_probability
    assert all(probs[i] > 0.9 for i in range(0, 8, 2)) and all(probs[i] < 0.1 for i in range(1, 8, 2))

    cfg = tune_postprocess(run, split="val", loaded=loaded)
    t = cfg.tuning
    assert t["adopted"]["classifier_gating"] and t["classifier_head"]
    assert 0.1 < cfg.gating.min_classifier_probability < 0.9
    assert t["image_dice_with_classifier_gate"] > t["image_dice_without_classifier_gate"]
    assert t["image_dice_with_gating"] > t["image_dice_without_gating"]

    ev = evaluate(loaded, data, tmp_path / "ev", split="val", overlays=False, quiet=True)
    assert ev["postprocess"]["gating"]["min_classifier_probability"] == cfg.gating.min_classifier_probability
    assert ev["image_dice"] > ev["image_dice_without_gating"]

    predict(loaded, [data / "images"], tmp_path / "pred", overlays=False, quiet=True)
    for i in range(8):
        m = read_raw(tmp_path / "pred" / f"s{i}.png")
        assert m.any() == (i % 2 == 0), i  # negatives gated to empty masks, positives kept
    plain = tmp_path / "plain"
    predict(loaded, [data / "images"], plain, overlays=False, quiet=True, postprocess=False)
    assert all(read_raw(plain / f"s{i}.png").any() for i in range(8))


# ---------------------------------------------------------------- end to end: train with the head


def _write_half_empty_data(root, n=12, size=48):
    """``n`` grey images, every other with bright squares (mask 1), the rest with empty masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.normal(60, 10, (size, size)).clip(0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if i % 2 == 0:
            y, x = rng.integers(4, size - 16, size=2)
            img[y : y + 12, x : x + 12] = 200
            mask[y : y + 12, x : x + 12] = 1
        Image.fromarray(img).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i:02d}.png")
    return root


@pytest.mark.slow
def test_train_with_head_then_gate_by_its_probability(tmp_path):
    import csv

    from biomedseg.inference.predict.batch import predict
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image, read_raw
    from biomedseg.postprocess.ops import GatingConfig, PostprocessConfig, save_postprocess
    from biomedseg.training.api import train
    from biomedseg.workflows.tune_postprocess import tune_postprocess

    data = _write_half_empty_data(tmp_path / "data")
    run = train(
        data,
        tmp_path / "run",
        epochs=2,
        seed=0,
        quiet=True,
        device="cpu",
        auto_plan=False,
        model_kwargs={**TINY_UNET, "classifier_head": True},
        patch_size=32,
        batch_size=4,
        iterations_per_epoch=3,
        num_threads=1,
        val_fraction=0.34,
        augment="flips",
    )
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model_kwargs"]["classifier_head"] is True and cfg["classifier_loss_weight"] == 0.1
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for r in rows:
        assert float(r["train_cls_loss"]) > 0
        assert 0.0 <= float(r["val_cls_acc"]) <= 1.0

    loaded = load_run(run, device="cpu")
    assert find_classifier(loaded.model) is not None  # the checkpoint's head loaded back
    val = json.loads((run / "dataset.json").read_text())["split"]["val"]
    predictor = loaded.predictor()
    probs = {}
    for sid in val:
        predictor.predict_proba(loaded.normalizer(read_image(data / "images" / f"{sid}.png")))
        probs[sid] = predictor.last_image_probability
        assert 0.0 <= probs[sid] <= 1.0

    tuned = tune_postprocess(run, split="val", loaded=loaded, write=False)
    assert tuned.tuning["classifier_head"] is True
    assert "classifier_gating" in tuned.tuning["adopted"]

    # a hand-set gate at the median probability: images below it get empty masks
    threshold = float(np.median(list(probs.values())))
    assert any(p < threshold for p in probs.values())
    save_postprocess(PostprocessConfig(gating=GatingConfig(min_classifier_probability=threshold)), run)
    predict(loaded, [data / "images" / f"{sid}.png" for sid in val], tmp_path / "gated", overlays=False, quiet=True)
    predict(
        loaded,
        [data / "images" / f"{sid}.png" for sid in val],
        tmp_path / "plain",
        overlays=False,
        quiet=True,
        postprocess=False,
    )
    for sid in val:
        gated, plain = read_raw(tmp_path / "gated" / f"{sid}.png"), read_raw(tmp_path / "plain" / f"{sid}.png")
        if probs[sid] < threshold:
            assert not gated.any(), sid
        else:
            np.testing.assert_array_equal(gated, plain)


# ---------------------------------------------------------------- command line


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run ``biomedseg ARGS`` in this process (so test-registered models exist): exit code, stderr."""
    code, _, err = _cli_out(monkeypatch, capsys, *args)
    return code, err


def _cli_out(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from biomedseg.cli import main

    monkeypatch.setattr(sys, "argv", ["biomedseg", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def test_cli_tune_postprocess_reports_the_classifier_gate(fixed_run, monkeypatch, capsys):
    run, _ = fixed_run
    code, out, err = _cli_out(monkeypatch, capsys, "tune-postprocess", run, "--device", "cpu", "--quiet")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "classifier gate" in ln)
    assert "without" in line and "with" in line and "adopted" in line
    assert "min_classifier_probability" in out


def test_cli_flag_reaches_the_config(tmp_path, monkeypatch, capsys):
    data = _write_half_empty_data(tmp_path / "data", n=4, size=32)
    code, err = _cli(
        monkeypatch,
        capsys,
        "train",
        data,
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--quiet",
        "--device",
        "cpu",
        "--classifier-head",
        "--set",
        "model_kwargs={depth: 3, base_channels: 4, num_res_units: 0}",
        "--set",
        "patch_size=32",
        "--set",
        "batch_size=2",
        "--set",
        "iterations_per_epoch=1",
        "--set",
        "num_threads=1",
        "--set",
        "auto_plan=false",
    )
    assert code == 0, err
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["model_kwargs"]["classifier_head"] is True
    assert cfg["model_kwargs"]["base_channels"] == 4  # merged with --set, not replaced


def test_cli_architecture_without_head_is_a_user_error(tmp_path, monkeypatch, capsys):
    def plain(in_channels, n_classes):
        return nn.Conv2d(in_channels, n_classes, 1)

    monkeypatch.setitem(registry._REGISTRY, "test-no-head", registry.ModelEntry("test-no-head", plain, 1, "no head"))
    data = _write_half_empty_data(tmp_path / "data", n=4, size=32)
    code, err = _cli(
        monkeypatch,
        capsys,
        "train",
        data,
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--quiet",
        "--model",
        "test-no-head",
        "--classifier-head",
    )
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "test-no-head" in lines[0] and "classifier head" in lines[0]
    assert not (tmp_path / "run" / "config.yaml").exists()
