"""Intensity normalisation: z-score, percentile clipping for deep data, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from biomedseg.transforms.normalize import CLIP_PERCENTILES, Normalizer, normalization_for

RNG = np.random.default_rng(0)


def _fluorescence(n=3, size=64):
    """16-bit images: a dim background, bright cells, and a few saturated hot pixels."""
    out = []
    for _ in range(n):
        img = RNG.normal(500, 50, (size, size)).clip(0, None)
        img[16:32, 16:32] += 2000
        img[RNG.integers(0, size, 20), RNG.integers(0, size, 20)] = 65535
        out.append(img.astype(np.uint16)[..., None])
    return out


def test_zscore_has_zero_mean_unit_std():
    imgs = [RNG.integers(0, 256, (32, 48, 3)).astype(np.uint8) for _ in range(4)]
    norm = Normalizer.fit(imgs)
    x = np.concatenate([norm(i).reshape(3, -1) for i in imgs], axis=1)
    assert np.allclose(x.mean(1), 0, atol=1e-5) and np.allclose(x.std(1), 1, atol=1e-4)
    assert norm.low is None and normalization_for(imgs) == "zscore"


def test_clip_zscore_tames_hot_pixels():
    imgs = _fluorescence()
    assert normalization_for(imgs) == "clip_zscore"
    plain, clipped = Normalizer.fit(imgs, "zscore"), Normalizer.fit(imgs, "auto")
    assert clipped.low is not None
    pooled = np.concatenate([i.ravel() for i in imgs]).astype(np.float64)
    lo, hi = np.percentile(pooled, CLIP_PERCENTILES)
    assert clipped.low[0] == pytest.approx(lo) and clipped.high[0] == pytest.approx(hi)  # < 65536 px: all used
    assert hi < 65535  # the hot pixels (0.5% of the pixels) lie above the 99.5th percentile
    y = clipped(imgs[0])
    assert y.max() == pytest.approx((hi - clipped.mean[0]) / clipped.std[0], rel=1e-5)  # hot pixels end there
    # the cells stand out more clearly than when the hot pixels set the scale
    cell = lambda n: float(n(imgs[0])[0, 16:32, 16:32].mean() - n(imgs[0])[0, 40:, 40:].mean())  # noqa: E731
    assert cell(clipped) > 1.5 * cell(plain)
    inside = np.clip(pooled, lo, hi)
    assert clipped.mean[0] == pytest.approx(inside.mean()) and clipped.std[0] == pytest.approx(inside.std())


def test_percentiles_are_sampled_with_a_seed_on_large_images():
    big = [RNG.normal(1000, 100, (400, 400, 1)).astype(np.float32) for _ in range(2)]  # 160k px > 65536
    a, b = Normalizer.fit(big, "clip_zscore", seed=1), Normalizer.fit(big, "clip_zscore", seed=1)
    assert a == b
    exact = np.percentile(np.concatenate([i.ravel() for i in big]), CLIP_PERCENTILES)
    assert abs(a.low[0] - exact[0]) < 10 and abs(a.high[0] - exact[1]) < 10  # 0.1 std of the data


def test_json_round_trip_and_old_runs():
    norm = Normalizer.fit(_fluorescence(), "clip_zscore")
    back = Normalizer.from_json(norm.to_json())
    assert back == norm
    old = Normalizer.from_json({"mean": [1.0], "std": [2.0]})  # dataset.json of a run without clipping
    assert old.low is None and old(np.full((2, 2, 1), 5.0))[0, 0, 0] == pytest.approx(2.0)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="normalization"):
        Normalizer.fit(_fluorescence(1), "minmax")
