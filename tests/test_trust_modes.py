"""Issue 22 follow-up: training data of several modes (a mixture of per-mode Gaussians), thresholds
from few images (tolerance bound), and trust.json files written before modes existed."""

from __future__ import annotations

import numpy as np
import pytest

DIM = 48


def _two_modes(n_per_mode: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of two modes (another modality moves most bottleneck channels: here every
    dimension by 1.5, signs fixed), each with its own small spread, and vectors of a third mode
    half-way between them (where one pooled Gaussian is centred)."""
    rng = np.random.default_rng(seed)
    centre = 1.5 * np.where(np.random.default_rng(0).random(DIM) < 0.5, -1.0, 1.0)
    a = rng.normal(0, 0.5, size=(n_per_mode, DIM)) + centre
    b = rng.normal(0, 0.5, size=(n_per_mode, DIM)) - centre
    third = rng.normal(0, 0.5, size=(10, DIM))
    return np.concatenate([a, b]), third


def _thresholded(features, held_out, val):
    from biomedseg.trust.modes import mixture_distance
    from biomedseg.trust.ood import calibrate_thresholds

    parts = [{"features": v} for v in held_out] + [{"features": mixture_distance(features, v)} for v in val]
    return calibrate_thresholds(parts)["features"]


def test_two_modes_are_found_and_a_third_mode_between_them_is_flagged():
    from biomedseg.trust.descriptor import _features
    from biomedseg.trust.modes import choose_modes, mixture_distance

    train, third = _two_modes()
    labels = choose_modes(train)
    assert labels.max() == 1 and len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1 and labels[0] != labels[-1]
    features, held_out = _features(train)
    assert features["n"] == 60 and features["dim"] == DIM and len(features["modes"]) == 2
    assert len(held_out) == 60 and all(m["typical"] > 0 for m in features["modes"])
    val, _ = _two_modes(n_per_mode=4, seed=5)  # new images of both training modes
    threshold = _thresholded(features, held_out, val)
    fresh, _ = _two_modes(n_per_mode=20, seed=9)
    assert max(mixture_distance(features, v) for v in fresh) <= threshold  # neither mode is flagged
    assert min(mixture_distance(features, v) for v in third) > threshold  # the third mode is


def test_one_mode_keeps_the_single_gaussian():
    from biomedseg.trust.descriptor import _features, feature_distance, fit_feature_gaussian
    from biomedseg.trust.modes import choose_modes, mixture_distance

    rng = np.random.default_rng(1)
    # one elongated mode (very unequal variances), not several
    x = rng.normal(size=(64, DIM)) * np.linspace(3.0, 0.2, DIM)
    assert choose_modes(x).max() == 0
    features, held_out = _features(x)
    assert "modes" not in features and features == fit_feature_gaussian(x) and len(held_out) == 64
    assert mixture_distance(features, x[0]) == feature_distance(features, x[0])


def test_old_trust_json_without_modes_still_scores():
    """A description as written before modes (one Gaussian; prototypes without modes) reads and scores."""
    from biomedseg.trust.descriptor import channel_histogram, fit_feature_gaussian
    from biomedseg.trust.ood import image_parts

    rng = np.random.default_rng(2)
    img = rng.integers(0, 200, size=(32, 32, 1)).astype(np.uint8)
    low, high = [0.0], [255.0]
    hist = channel_histogram(img, low, high)
    old = {
        "version": 1,
        "channels": 1,
        "pixel_size": {"median": None, "known": 0},
        "intensity": {"bins": 64, "low": low, "high": high, "histogram": hist.tolist(), "prototypes": [hist.tolist()]},
        "features": fit_feature_gaussian(rng.normal(size=(20, 8))),
        "thresholds": {"intensity": 0.05, "features": 2.0},
    }
    parts = image_parts(old, img, None, rng.normal(size=8))
    assert parts["intensity"] == pytest.approx(0.0) and parts["features"] > 0
    older = {**old, "intensity": {k: v for k, v in old["intensity"].items() if k != "prototypes"}}
    assert image_parts(older, img, None, None)["intensity"] == pytest.approx(0.0)


def test_thresholds_from_few_images_lie_above_their_largest():
    from biomedseg.trust.ood import calibrate_thresholds, tolerance_bound

    rng = np.random.default_rng(4)
    few = np.exp(rng.normal(0, 0.3, size=8))
    many = np.exp(rng.normal(0, 0.3, size=400))
    assert tolerance_bound(few) > few.max()
    assert calibrate_thresholds([{"features": v} for v in few])["features"] == tolerance_bound(few)
    assert tolerance_bound([1.0, 2.0]) is None  # too few values: the largest is kept
    assert calibrate_thresholds([{"features": 1.0}, {"features": 2.0}])["features"] == 2.0
    # many images: close to the true 99th percentile (exp(2.326 * 0.3) = 2.01)
    assert 1.8 < tolerance_bound(many) < 2.4
