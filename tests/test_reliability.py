"""Issue 22, evaluate and tune-postprocess: the uncertainty columns and how well they rank errors,
the calibration temperature fitted on validation pixels, applied by the post-processing chain and
reported as the expected calibration error before and after."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_fake_run

SHARP = "_test_over_confident_logits"


@pytest.fixture
def sharp_run(tmp_path):
    """A run whose 'network' is a fixed, over-confident 1x1 convolution: foreground logit
    ``30 * (x - 100) / 50``, on 8 images of a square at ``100 + d`` on a background at ``100 - d``
    with Gaussian pixel noise (sd 15) and a contrast ``d`` falling from 45 to 10 (the Bayes logit is
    ``2 d (x - 100) / 15^2``: flatter than the network's, so it is over-confident, and low-contrast
    images have more wrong and less certain pixels)."""
    from torch import nn

    from biomedseg.models import create_model, registry

    def factory(in_channels, n_classes, **_):
        conv = nn.Conv2d(in_channels, n_classes, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[1, 0] = 30.0
        return conv

    registry.register(SHARP, multiple=1, description="test")(factory)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    ids = []
    for i in range(8):
        mask = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(4, 20, size=2)
        mask[y : y + 22, x : x + 22] = 1
        d = 45.0 - 5.0 * i
        img = np.where(mask == 1, 100.0 + d, 100.0 - d) + rng.normal(0, 15.0, size=mask.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(data / "images" / f"s{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"s{i}.png")
        ids.append(f"s{i}")
    run = write_fake_run(
        tmp_path / "run", SHARP, create_model(SHARP, 1, 2).state_dict(), data, ids, patch_size=48, batch_size=2
    )
    yield run, data
    registry._REGISTRY.pop(SHARP, None)


def test_pixel_sample_skips_unlabelled_and_invalid_pixels_and_fits_over_confident_maps():
    from biomedseg.core.labels import IGNORE_INDEX
    from biomedseg.metrics.calibration import softmax
    from biomedseg.workflows.reliability import fit_calibration, pixel_sample

    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        logits = rng.normal(0, 1.5, size=(3, 40, 40))
        p = softmax(logits, axis=0)
        labels = (rng.random((40, 40))[None] > np.cumsum(p, axis=0)).sum(axis=0)  # drawn from p: calibrated
        labels[:5] = IGNORE_INDEX
        valid = np.ones((40, 40), bool)
        valid[:, :10] = False
        proba, y = pixel_sample(softmax(4.0 * logits, axis=0), labels, 10_000, i, valid)  # 4x over-confident
        assert y.size == 35 * 30 and proba.shape == (3, y.size) and y.max() < 3
        samples.append((proba, y))
    block = fit_calibration(samples)
    assert block["temperature"] > 2.0
    assert block["ece_after"] < block["ece_before"] / 2
    assert block["n_pixels"] == 4 * 35 * 30


def test_evaluate_decides_on_probabilities_at_the_run_temperature(sharp_run, tmp_path):
    """A threshold of 0.9 keeps the network's sure foreground at T = 1; at T = 20 every probability
    is near 0.5, so nothing passes it: evaluate must temper before the chain decides."""
    from biomedseg.postprocess.ops import ClassSteps, PostprocessConfig, save_postprocess
    from biomedseg.workflows.evaluation import evaluate

    run, data = sharp_run
    dice = {}
    for t in (1.0, 20.0):
        save_postprocess(PostprocessConfig(classes={"cell": ClassSteps(threshold=0.9)}, temperature=t), run)
        m = evaluate(run, data, tmp_path / f"ev{t}", split="val", overlays=False, quiet=True, metrics="pixel")
        dice[t] = m["image_dice"]
        assert m["calibration"]["temperature"] == t
    assert dice[1.0] > 0.7 and dice[20.0] < 0.1


def test_tune_postprocess_fits_a_temperature_and_evaluate_reports_ranking_and_calibration(sharp_run, tmp_path):
    from biomedseg.metrics.uncertainty import DEFAULT_SCORE, IMAGE_SCORES
    from biomedseg.postprocess.ops import load_postprocess
    from biomedseg.workflows.evaluation import evaluate, format_metrics
    from biomedseg.workflows.tune_postprocess import tune_postprocess

    run, data = sharp_run
    plain = evaluate(run, data, tmp_path / "ev0", split="val", overlays=False, quiet=True)
    assert plain["calibration"]["temperature"] == 1.0
    assert plain["calibration"]["ece_after"] == plain["calibration"]["ece_before"] > 0.05

    cfg = tune_postprocess(run, split="val")
    assert cfg.temperature > 1.2  # softer than the network: it is over-confident
    assert cfg.tuning["temperature"] == cfg.temperature
    assert cfg.tuning["ece_after"] < cfg.tuning["ece_before"]
    assert load_postprocess(run).temperature == cfg.temperature  # written to postprocess.yaml

    m = evaluate(run, data, tmp_path / "ev", split="val", overlays=False, quiet=True)
    c = m["calibration"]
    assert c["temperature"] == cfg.temperature and c["ece_after"] < c["ece_before"]
    assert c["ece_before"] == pytest.approx(plain["calibration"]["ece_before"])  # the same pixels, at T = 1
    u = m["uncertainty"]
    assert u["score"] == DEFAULT_SCORE and set(u["scores"]) == set(IMAGE_SCORES)
    assert u["spearman"] < -0.5  # noisier images: lower Dice, higher uncertainty
    assert u["aurc"] < u["aurc_random"] and u["aurc_oracle"] <= u["aurc"]
    assert set(u["dice_kept"]) == {10, 20, 50} and u["dice_kept"][50] >= u["dice_all"]

    with open(tmp_path / "ev" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    for key in ("uncertainty", *IMAGE_SCORES):
        assert all(r[key] != "" for r in rows), key
    assert [float(r["uncertainty"]) for r in rows] == [float(r[DEFAULT_SCORE]) for r in rows]
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["uncertainty"]["aurc"] == pytest.approx(u["aurc"]) and "ece_after" in saved["calibration"]
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "Which predictions to trust" in page and "expected calibration error" in page
    text = format_metrics(m)
    assert "spearman with image Dice" in text and "calibration: ECE" in text


def _miscalibrated_image(factor: float, seed: int):
    """Pixel sample of one image whose probabilities are ``softmax(factor * logits)`` with labels drawn
    from ``softmax(logits)``: over-confident for ``factor > 1`` (its best temperature is about ``factor``)."""
    from biomedseg.metrics.calibration import softmax
    from biomedseg.workflows.reliability import pixel_sample

    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(2, 60, 60))
    labels = (rng.random((60, 60))[None] > np.cumsum(softmax(logits, axis=0), axis=0)).sum(axis=0)
    return pixel_sample(softmax(factor * logits, axis=0), labels, 5000, seed)


def test_temperature_is_shrunk_toward_one_when_few_images_disagree():
    from biomedseg.workflows.reliability import fit_calibration, shrunk_temperature

    agree = fit_calibration([_miscalibrated_image(2.0, i) for i in range(5)])
    assert agree["temperature"] > 1.7 and agree["temperature_weight"] > 0.95  # consistent: kept
    assert agree["temperature"] == pytest.approx(agree["temperature_fitted"], rel=0.02)
    disagree = fit_calibration([_miscalibrated_image(2.0, 0), _miscalibrated_image(0.7, 1)])
    assert disagree["temperature_fitted"] != 1.0 and disagree["n_images"] == 2
    assert disagree["temperature"] == 1.0 and disagree["temperature_weight"] == 0.0  # no evidence it carries
    one = fit_calibration([_miscalibrated_image(2.0, 0)])
    assert one["temperature_fitted"] > 1.7 and one["temperature"] == 1.0  # one image is one piece of evidence
    # the rule: log T shrunk by max(0, 1 - se^2 / log(T)^2), se^2 the per-image variance of log T over n
    t, w = shrunk_temperature(1.5, [1.2, 1.5, 1.9, 1.4])
    logs = np.log([1.2, 1.5, 1.9, 1.4])
    assert w == pytest.approx(1 - logs.var(ddof=1) / 4 / np.log(1.5) ** 2)
    assert 1.0 < t < 1.5 and t == pytest.approx(1.5**w)


def test_tune_postprocess_fits_the_temperature_inside_the_valid_masks(sharp_run, tmp_path):
    from biomedseg.core.errors import UserError
    from biomedseg.workflows.tune_postprocess import tune_postprocess

    run, data = sharp_run
    whole = tune_postprocess(run, data, split="all", device="cpu", write=False)
    valid = tmp_path / "fov"
    valid.mkdir()
    for p in sorted((data / "images").iterdir()):
        region = np.zeros((48, 48), np.uint8)
        region[:, :6] = 255  # a strip of background only: the network is right and sure there
        Image.fromarray(region).save(valid / p.name)
    inside = tune_postprocess(run, data, split="all", device="cpu", write=False, valid_dir=valid)
    assert inside.temperature != whole.temperature
    next(valid.iterdir()).unlink()
    with pytest.raises(UserError, match="no valid-region mask"):
        tune_postprocess(run, data, split="all", device="cpu", write=False, valid_dir=valid)
