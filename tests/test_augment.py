"""Augmentations: image/mask consistency of spatial transforms, intensity transforms leave the
mask alone, determinism, presets and config lists, the preview picture."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from biomedseg.core.errors import UserError
from biomedseg.transforms import augment as A
from biomedseg.transforms.basic import Compose, build_augmenter


def _pair(h=128, w=112, seed=0):
    """A smooth 2-channel image and a 3-class mask derived from channel 0 by thresholds."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((2, h, w)), (0, 8, 8))
    img = (img / img.std()).astype(np.float32)
    return img, _classes(img)


def _classes(img):
    return (img[0] > -0.4).astype(np.int64) + (img[0] > 0.6).astype(np.int64)


SPATIAL = {
    "flip": A.Flip(p=1.0),
    "rot90": A.Rot90(),
    "flip_rot90": A.FlipRot90(),
    "rotate": A.Spatial(rotate_p=1.0, degrees=40),
    "scale": A.Spatial(scale_p=1.0, scale=(0.7, 1.4)),
    "elastic": A.Spatial(elastic_p=1.0, sigma=16, magnitude=4),
    "all": A.Spatial(rotate_p=1.0, degrees=30, scale_p=1.0, elastic_p=1.0),
    "crop_resize": A.RandomCrop(p=1.0, scale=(0.5, 0.8), resize=True),
    "crop_pad": A.RandomCrop(p=1.0, scale=(0.5, 0.8), resize=False),
    "pad_symmetric": A.Pad(pad=20, mode="symmetric"),
    "pad_reflect": A.Pad(pad=20, mode="reflect"),
    "pad_constant": A.Pad(size=160, mode="constant", value=-5.0),
    "strong_spatial": Compose(A.build_preset("strong").transforms[:2]),  # without the intensity part
}


@pytest.mark.parametrize("name", sorted(SPATIAL))
@pytest.mark.parametrize("seed", [0, 1])
def test_spatial_transforms_keep_image_and_mask_together(name, seed):
    img, mask = _pair(seed=seed)
    rng = np.random.default_rng(seed)
    out, m = SPATIAL[name](img, mask, rng)
    assert out.dtype == np.float32 and m.dtype == np.int64
    assert out.shape[1:] == m.shape
    assert set(np.unique(m)) <= {0, 1, 2}  # nearest neighbour: no new class values
    b = 12
    inner = (slice(b, -b), slice(b, -b))
    agreement = np.mean(_classes(out)[inner] == m[inner])
    assert agreement > 0.97, f"{name}: {agreement:.3f}"
    if name.startswith(("rotate", "scale", "elastic", "all", "crop")):
        assert not np.array_equal(m, mask)  # it did something


def test_square_and_non_square_rot90():
    img, mask = _pair(64, 64)
    seen = set()
    for s in range(12):
        out, m = A.Rot90()(img, mask, np.random.default_rng(s))
        for k in range(4):
            if np.array_equal(m, np.rot90(mask, k)):
                seen.add(k)
                np.testing.assert_array_equal(out, np.rot90(img, k, axes=(1, 2)))
    assert seen == {0, 1, 2, 3}
    img, mask = _pair(64, 48)
    for s in range(6):
        out, m = A.FlipRot90()(img, mask, np.random.default_rng(s))
        assert m.shape == (64, 48) and out.shape == (2, 64, 48)


INTENSITY = {
    "gaussian_noise": A.GaussianNoise(p=1.0, std=(0.05, 0.1)),
    "uniform_noise": A.UniformNoise(p=1.0, amplitude=0.1),
    "brightness": A.Brightness(p=1.0, delta=0.3),
    "contrast": A.Contrast(p=1.0, factor=(0.5, 0.7)),
    "channel_jitter": A.ChannelJitter(p=1.0, scale=(0.8, 1.2), shift=0.2),
    "gamma": A.Gamma(p=1.0, gamma=(1.5, 2.0)),
    "blur": A.GaussianBlur(p=1.0, sigma=(1.0, 1.5)),
}


@pytest.mark.parametrize("name", sorted(INTENSITY))
def test_intensity_transforms_never_change_the_mask(name):
    img, mask = _pair()
    keep = mask.copy()
    out, m = INTENSITY[name](img, mask, np.random.default_rng(3))
    np.testing.assert_array_equal(m, keep)
    assert out.shape == img.shape and out.dtype == np.float32
    assert not np.allclose(out, img)


def test_intensity_values():
    img, mask = _pair()
    out, _ = A.Gamma(p=1.0, gamma=(2.0, 2.0))(img, mask, np.random.default_rng(0))
    for c in range(2):  # range kept, monotone, values pushed down for gamma > 1
        assert out[c].min() == pytest.approx(img[c].min(), abs=1e-5)
        assert out[c].max() == pytest.approx(img[c].max(), abs=1e-5)
    assert np.all(out <= img + 1e-5)
    out, _ = A.Contrast(p=1.0, factor=(0.5, 0.5))(img, mask, np.random.default_rng(0))
    np.testing.assert_allclose(out.std(axis=(1, 2)), 0.5 * img.std(axis=(1, 2)), rtol=1e-4)
    out, _ = A.Brightness(p=1.0, delta=0.3)(img, mask, np.random.default_rng(0))
    shift = out - img
    assert np.ptp(shift) < 1e-5 and abs(shift.flat[0]) <= 0.3


def test_padding_modes():
    img = np.arange(3, dtype=np.float32).reshape(1, 1, 3)
    mask = np.array([[1, 2, 2]], np.int64)
    out, m = A.Pad(pad=2, mode="symmetric")(img, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0, 2], [1, 0, 0, 1, 2, 2, 1])
    np.testing.assert_array_equal(m[2], [2, 1, 1, 2, 2, 2, 2])
    out, m = A.Pad(pad=2, mode="reflect")(np.tile(img, (1, 1, 2)), np.tile(mask, (1, 2)), np.random.default_rng(0))
    np.testing.assert_array_equal(out[0, 2], [2, 1, 0, 1, 2, 0, 1, 2, 1, 0])
    out, m = A.Pad(pad=1, mode="constant", value=-7)(img, mask, np.random.default_rng(0))
    assert out[0, 0, 0] == -7 and m[0, 0] == 0 and out.shape == (1, 3, 5)


@pytest.mark.parametrize("preset", ["flips", "default", "strong"])
def test_presets_are_deterministic_per_seed(preset):
    img, mask = _pair()
    pipe = A.build_preset(preset)
    a = [pipe(img, mask, rng) for rng in [np.random.default_rng(7)] * 4]
    b = [pipe(img, mask, rng) for rng in [np.random.default_rng(7)] * 4]
    for (x1, m1), (x2, m2) in zip(a, b):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(m1, m2)
    outs = [pipe(img, mask, np.random.default_rng(s))[0] for s in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])
    assert all(o.flags.c_contiguous for o in outs)


def test_preset_lookup_and_fallback():
    assert A.build_preset("nope") is None
    assert len(A.build_preset("none").transforms) == 0
    assert isinstance(build_augmenter("strong").transforms[1], A.Spatial)
    assert build_augmenter("default").transforms[1].rotate_p > 0
    with pytest.raises(UserError, match="preset"):
        build_augmenter("nope")


def test_build_augmentations_from_config_list():
    pipe = A.build_augmentations(
        [
            {"name": "flip_rot90"},
            {"name": "rotate", "p": 0.5, "degrees": 30},
            {"name": "scale", "p": 0.3, "scale": [0.8, 1.25]},
            {"name": "elastic", "p": 0.2, "sigma": 12, "magnitude": 3},
            {"name": "gamma", "p": 0.3, "gamma": [0.7, 1.5]},
            "blur",
        ]
    )
    kinds = [type(t).__name__ for t in pipe.transforms]
    assert kinds == ["FlipRot90", "Spatial", "Gamma", "GaussianBlur"]  # one resampling for the three
    sp = pipe.transforms[1]
    assert (sp.rotate_p, sp.degrees, sp.scale_p, sp.scale, sp.elastic_p, sp.sigma) == (
        0.5,
        30.0,
        0.3,
        (0.8, 1.25),
        0.2,
        12.0,
    )
    img, mask = _pair()
    out, m = pipe(img, mask, np.random.default_rng(0))
    assert out.shape == img.shape and m.shape == mask.shape
    two = A.build_augmentations([{"name": "rotate"}, {"name": "rotate"}])
    assert len(two.transforms) == 2  # same component twice: kept apart


@pytest.mark.parametrize(
    "spec,match",
    [
        ([{"name": "twirl"}], "unknown transform"),
        ([{"name": "rotate", "angle": 3}], "rotate"),
        ([{"name": "gamma", "p": 2}], "p must be"),
        ([{"p": 0.5}], "name"),
        ("rotate", "list"),
    ],
)
def test_build_augmentations_errors(spec, match):
    with pytest.raises(UserError, match=match):
        A.build_augmentations(spec)


def test_augment_preview(tmp_path):
    from biomedseg.data.synthetic import make_synthetic_dataset
    from biomedseg.reports.augment_preview import augment_preview

    data = make_synthetic_dataset(tmp_path / "data", n_train=3, n_test=0, size=(64, 64), seed=0)
    out = augment_preview(data, tmp_path / "preview.png", preset="strong", n=3, seed=0)
    from PIL import Image

    with Image.open(out) as im:
        w, h = im.size
    assert w == 4 * 256 + 3 * 4 and h == 3 * 256 + 2 * 4
    with pytest.raises(UserError):
        augment_preview(data, tmp_path / "x.png", preset="nope")


@pytest.mark.parametrize("mode", ["symmetric", "reflect"])
@pytest.mark.parametrize("shape", [(64, 64), (37, 50)])
def test_warp_equals_scipy_map_coordinates_inside_and_beyond_the_edges(mode, shape):
    """``warp`` (grid_sample for the reflecting modes) gives SciPy's values: bilinear image to
    float rounding, nearest-neighbour mask on every pixel not at a rounding tie, for coordinates
    that leave the image by up to a third of its size (the reflection)."""
    from biomedseg.transforms.augment_base import NDIMAGE_MODE
    from biomedseg.transforms.spatial import warp

    rng = np.random.default_rng(1)
    h, w = shape
    image = rng.standard_normal((3, h, w)).astype(np.float32)
    mask = rng.integers(0, 4, (h, w))
    mask[0, 0] = 255  # the ignore value travels unchanged
    coords = np.stack(np.meshgrid(np.linspace(-h / 3, h * 4 / 3, h), np.linspace(-w / 3, w * 4 / 3, w), indexing="ij"))
    coords = (coords + rng.uniform(-0.4, 0.4, coords.shape)).astype(np.float32)
    out, m = warp(image, mask, coords, mode)
    nd = NDIMAGE_MODE[mode]
    for c in range(3):
        ref = ndimage.map_coordinates(image[c], coords, order=1, mode=nd, prefilter=False)
        np.testing.assert_allclose(out[c], ref, atol=1e-4)
    ref_m = ndimage.map_coordinates(mask, coords, order=0, mode=nd, prefilter=False)
    tie = np.any(np.abs(np.abs(coords - np.floor(coords)) - 0.5) < 1e-3, axis=0)
    assert m.dtype == np.int64 and np.array_equal(m[~tie], ref_m[~tie])
    assert set(np.unique(m)) <= set(np.unique(mask))
