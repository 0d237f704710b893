"""Out-of-distribution scores against the description of a run's training data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biomedseg.io import read_image

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def described(trained_run, synthetic_data):
    from biomedseg.inference.run import load_run
    from biomedseg.trust.ood import build_description

    run = load_run(trained_run, device="cpu")
    split = run.info.split
    train = [read_image(synthetic_data / "images" / f"{i}.png") for i in split["train"]]
    val = [read_image(synthetic_data / "images" / f"{i}.png") for i in split["val"]]
    predictor = run.predictor()
    desc = build_description(run, train, [None] * len(train), val, [None] * len(val), predictor)
    return run, predictor, desc, train


def _other_modalities(shape):
    rng = np.random.default_rng(3)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    checker = (((yy // 8 + xx // 8) % 2) * 255).astype(np.uint8)[..., None]
    noise = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return {"checkerboard": checker, "rgb noise": noise}


def test_other_modalities_are_flagged_and_training_images_are_not(described):
    from biomedseg.trust.features import predict_with_features
    from biomedseg.trust.ood import ood_scores

    run, predictor, desc, train = described
    assert desc["features"] is not None and desc["features"]["n"] == len(train)
    assert set(desc["thresholds"]) == {"intensity", "features"}  # no pixel sizes known
    for img in train:
        _, feats = predict_with_features(run, predictor, img)
        result = ood_scores(run, desc, img, None, features=feats)
        assert not result["flag"], result
        assert result["score"] <= 1
    for name, img in _other_modalities(train[0].shape[:2]).items():
        result = ood_scores(run, desc, img, None, predictor=predictor)
        assert result["flag"], (name, result)
        assert result["score"] > 1, (name, result)
        assert "features unlike training" in result["reasons"] or "intensity unlike training" in result["reasons"]
    noise = ood_scores(run, desc, _other_modalities(train[0].shape[:2])["rgb noise"], None, predictor=predictor)
    assert "colour image; the training images are grey" in noise["reasons"]


def test_pixel_size_reason_and_json_round_trip(described, tmp_path):
    from biomedseg.trust.descriptor import read_description, write_description
    from biomedseg.trust.ood import calibrate_thresholds, ood_scores

    run, predictor, desc, train = described
    desc = dict(desc, pixel_size={"median": [0.5, 0.5], "known": 8})
    desc["thresholds"] = dict(desc["thresholds"], **calibrate_thresholds([{"pixel_size": 0.0}]))
    write_description(tmp_path, desc)
    back = read_description(tmp_path)
    assert json.loads(json.dumps(back)) == back
    assert read_description(tmp_path / "nothing") is None
    same = ood_scores(run, back, train[0], (0.5, 0.5), predictor=predictor)
    assert not same["flag"] and same["parts"]["pixel_size"] == 0
    half = ood_scores(run, back, train[0], (0.25, 0.25), predictor=predictor)
    assert half["flag"] and "pixel size 0.25 µm vs 0.5 µm in training" in half["reasons"]


def test_descriptor_is_compact():
    from biomedseg.trust.descriptor import feature_distance, fit_feature_gaussian

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 512))
    g = fit_feature_gaussian(x, max_rank=16)
    assert np.asarray(g["components"]).shape == (16, 512)
    inside = np.mean([feature_distance(g, v) for v in x[:20]])
    far = feature_distance(g, x[0] + 4.0)
    assert 0.5 < inside < 1.5 and far > 5 * inside


def test_prediction_row_counts_and_scores():
    from biomedseg.trust.rows import prediction_row, uncertainty_image

    mask = np.zeros((20, 30), np.int64)
    mask[2:6, 2:6] = 1
    mask[10:14, 10:14] = 1
    mask[15:18, 20:28] = 2
    proba = np.full((3, 20, 30), 0.05)
    np.put_along_axis(proba, mask[None], 0.9, axis=0)
    row = prediction_row(
        proba, ["background", "cell", "filament"], 0, ood={"score": 2.0, "flag": True, "reasons": ["a", "b"]}
    )
    assert (row["area_cell"], row["objects_cell"], row["area_filament"], row["objects_filament"]) == (32, 2, 24, 1)
    assert "area_background" not in row and row["mean_foreground_probability"] == pytest.approx(0.9)
    assert row["ood_flag"] is True and row["ood_reasons"] == "a; b" and row["uncertainty"] > 0
    empty = prediction_row(proba, ["background", "cell", "filament"], 0, mask=np.zeros((20, 30), np.int64))
    assert empty["mean_foreground_probability"] is None and empty["ood_score"] is None
    u = uncertainty_image(proba)
    assert u.dtype == np.float16 and u.shape == (20, 30)
