"""Orientation evidence (flips / 90-degree rotations measured on the images) and the intensity
variation between images, on synthetic data with and without a preferred axis."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from biomedseg.planning import intensity_variation as IV
from biomedseg.planning import orientation as O


def _blobs(rng, h, w, sigma=(4.0, 4.0)):
    """Smooth random texture, unit std (isotropic for equal sigmas)."""
    x = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="wrap")
    return x / x.std()


def _to_uint8(x):
    return np.clip(128 + 40 * x, 0, 255).astype(np.uint8)[:, :, None]


def _fan(h, w, half_angle=35.0):
    """Ultrasound sector: apex at the top centre, opening downwards."""
    y, x = np.mgrid[0:h, 0:w].astype(float)
    angle = np.degrees(np.arctan2(x - (w - 1) / 2, y + 1))
    r = np.hypot(x - (w - 1) / 2, y + 1)
    return (np.abs(angle) < half_angle) & (r < 0.95 * h)


def _ultrasound(n, h=180, w=240, seed=0):
    """Speckle-like texture, attenuated with depth, inside a fan: a depth (up-down) axis."""
    rng = np.random.default_rng(seed)
    fan = _fan(h, w)
    depth = np.exp(-np.arange(h) / h * 1.5)[:, None]
    return [_to_uint8(np.where(fan, (1.5 + 0.5 * _blobs(rng, h, w, (1.0, 3.0))) * depth, -3.0)) for _ in range(n)]


def _isotropic(n, seed=0):
    rng = np.random.default_rng(seed)
    return [_to_uint8(_blobs(rng, int(rng.integers(150, 260)), int(rng.integers(150, 260)))) for _ in range(n)]


def test_ultrasound_fan_has_a_depth_axis():
    ev = O.orientation_evidence(_ultrasound(40))
    assert ev["n_images"] == 40
    assert not ev["ud_flip"]["invariant"] and not ev["rot90"]["invariant"]
    assert ev["lr_flip"]["invariant"]  # the fan is left-right symmetric
    assert ev["ud_flip"]["ratio"] >= O.NOISE_FACTOR and ev["ud_flip"]["score"] >= O.MIN_ASYMMETRY
    assert "up-down flip changes the data" in ev["ud_flip"]["reason"]
    assert f"{ev['ud_flip']['ratio']:.1f}x" in ev["ud_flip"]["reason"]
    assert "keeps the data" in ev["lr_flip"]["reason"]
    json.dumps(ev)  # plain data


def test_isotropic_blobs_have_no_preferred_orientation():
    ev = O.orientation_evidence(_isotropic(40))
    for name in O.TRANSFORMS:
        assert ev[name]["invariant"], ev[name]["reason"]
        assert ev[name]["ratio"] < 2.0
    assert abs(ev["anisotropy"] - 1.0) < 0.1


def test_anisotropic_texture_forbids_only_the_quarter_turn():
    """Streaks along x in every image, no layout: flips keep the data, a transpose does not."""
    rng = np.random.default_rng(1)
    images = [_to_uint8(_blobs(rng, 160, 160, (1.0, 6.0))) for _ in range(30)]
    ev = O.orientation_evidence(images)
    assert ev["lr_flip"]["invariant"] and ev["ud_flip"]["invariant"]
    assert not ev["rot90"]["invariant"] and ev["rot90"]["statistic"] == "gradients"
    assert ev["anisotropy"] > 1.5  # vertical differences dominate


def test_a_few_images_never_show_a_preferred_axis():
    """The ratio to the noise floor cannot exceed sqrt(n): 4 fans are not evidence."""
    ev = O.orientation_evidence(_ultrasound(4))
    assert all(ev[name]["invariant"] for name in O.TRANSFORMS)
    assert ev["ud_flip"]["ratio"] <= 2.0 + 1e-6


@pytest.mark.parametrize("amplitude, invariant", [(0.1, True), (0.5, False)])
def test_a_faint_consistent_gradient_does_not_forbid_flips(amplitude, invariant):
    """Uneven illumination (a top-to-bottom ramp of +-amplitude pixel std) in all 60 images: far
    above the noise floor either way; only the strong one is an asymmetry that matters."""
    rng = np.random.default_rng(2)
    ramp = np.linspace(-amplitude, amplitude, 512, dtype=np.float32)[:, None, None]
    images = [rng.standard_normal((512, 512, 1), np.float32) + ramp for _ in range(60)]
    ud = O.orientation_evidence(images)["ud_flip"]
    assert ud["ratio"] >= O.NOISE_FACTOR
    assert ud["invariant"] is invariant, ud["reason"]
    assert (ud["score"] < O.MIN_ASYMMETRY) is invariant


def test_inputs_of_any_kind_and_subsampling():
    rng = np.random.default_rng(3)
    images = [
        (_blobs(rng, 120, 90) * 1000 + 30000).astype(np.uint16)[:, :, None],
        np.repeat(_to_uint8(_blobs(rng, 100, 140)), 3, axis=2),
        _blobs(rng, 70, 70).astype(np.float32),  # (H, W)
        np.zeros((50, 60, 1), np.uint8),  # constant
        np.zeros((1, 60, 1), np.uint8),
    ]  # a single row
    ev = O.orientation_evidence(images)
    assert ev["n_images"] == 5 and all(ev[n]["invariant"] for n in O.TRANSFORMS)
    assert O.orientation_evidence([])["n_images"] == 0
    many = O.orientation_evidence([np.full((8, 8, 1), i, np.uint8) for i in range(3 * O.MAX_IMAGES)])
    assert many["n_images"] == O.MAX_IMAGES


def test_area_averaging_is_exact():
    a = np.random.default_rng(4).random((128, 192))
    grid = O._to_grid(a)
    np.testing.assert_allclose(grid, a.reshape(64, 2, 64, 3).mean(axis=(1, 3)), atol=1e-5)
    odd = np.random.default_rng(5).random((135, 201))
    assert abs(O._to_grid(odd).mean() - odd.mean()) < 1e-3


# -- intensity variation -----------------------------------------------------------------------


def test_uniform_data_gets_the_floors():
    img = _to_uint8(_blobs(np.random.default_rng(0), 64, 64))
    grey = IV.intensity_variation([img] * 10, 1)
    assert grey["brightness_spread"] == 0 and grey["contrast_spread"] == 0
    assert grey["ranges"]["brightness"] == IV.BRIGHTNESS_DELTA[0]
    low = IV.CONTRAST_LOG[0]
    assert grey["ranges"]["contrast"] == [round(math.exp(-low), 3), round(math.exp(low), 3)]
    assert "channel_shift" not in grey["ranges"]
    rgb = IV.intensity_variation([np.repeat(img, 3, axis=2)] * 10, 3)
    assert rgb["ranges"]["channel_shift"] == IV.CHANNEL_SHIFT[0]
    assert rgb["ranges"]["channel_scale"][1] == round(math.exp(IV.CHANNEL_SCALE[0]), 3)


def test_wildly_varying_data_gets_the_caps():
    rng = np.random.default_rng(1)
    images = [
        (rng.random((40, 40, 3)) * rng.uniform(5, 250, size=3) + rng.uniform(0, 100, size=3)).astype(np.float32)
        for _ in range(30)
    ]
    v = IV.intensity_variation(images, 3)
    assert v["ranges"]["brightness"] == IV.BRIGHTNESS_DELTA[1]
    assert v["ranges"]["contrast"][1] == round(math.exp(IV.CONTRAST_LOG[1]), 3)
    assert v["ranges"]["channel_shift"] == IV.CHANNEL_SHIFT[1]
    assert v["ranges"]["channel_scale"][1] == round(math.exp(IV.CHANNEL_SCALE[1]), 3)


def test_ranges_follow_the_measured_spread():
    """Image means spread by 0.1 pooled std: the brightness range is sqrt(3) x that."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((64, 64))
    offsets = rng.standard_normal(200)
    offsets = (offsets - offsets.mean()) / offsets.std() * 0.1
    images = [(base + o)[:, :, None] for o in offsets]
    v = IV.intensity_variation(images, 1)
    pooled = math.sqrt(base.var() + 0.01)
    assert v["brightness_spread"] == pytest.approx(0.1 / pooled, rel=1e-3)
    assert v["ranges"]["brightness"] == pytest.approx(IV.SPREAD_FACTOR * 0.1 / pooled, abs=1e-3)
    assert v["contrast_spread"] < 1e-6


def test_colour_spread_only_for_channels_that_move_apart():
    rng = np.random.default_rng(3)
    base = rng.random((32, 32, 3)) * 50 + 100
    together = [base + o for o in rng.normal(0, 20, 20)]  # all channels shift together
    apart = [base + np.array([o, 0, 0]) for o in rng.normal(0, 20, 20)]  # only red moves (stain)
    t, a = IV.intensity_variation(together, 3), IV.intensity_variation(apart, 3)
    assert t["colour_shift_spread"] < 0.01 < t["brightness_spread"]  # (channels differ a little in std)
    assert a["colour_shift_spread"] > 0.1
    assert a["per_channel"]["mean_spread"][0] > 0.1 and a["per_channel"]["mean_spread"][1] < 1e-6


def test_channels_as_training_sees_them():
    """Grey stored as RGB read with channels=1, grey read with channels=3 (replicated)."""
    img = _to_uint8(_blobs(np.random.default_rng(4), 32, 32))
    assert IV.intensity_variation([np.repeat(img, 3, axis=2)] * 3, 1)["channels"] == 1
    v = IV.intensity_variation([img, img // 2], 3)
    assert len(v["per_channel"]["mean_spread"]) == 3 and v["colour_shift_spread"] < 1e-6
    assert IV.intensity_variation([], 1)["ranges"]["brightness"] == IV.BRIGHTNESS_DELTA[0]
