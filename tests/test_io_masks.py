"""Tests for biomedseg.io.masks: palettes, discovery of every mask encoding, snapping."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import biomedseg.io.masks as masks_mod
from biomedseg.core.errors import UserError
from biomedseg.io.masks import Palette, discover_palette, palette_for_classes, read_mask


def _blobs(seed, h=64, w=64, n_classes=2):
    """Index mask (H, W) uint8 with rectangles of classes 1..n_classes-1 on background 0."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for c in range(1, n_classes):
        for _ in range(2):
            y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
            m[y : y + rng.integers(6, 16), x : x + rng.integers(6, 16)] = c
    return m


def _save(path, array, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


# --- Palette --------------------------------------------------------------------------


def test_palette_identity_and_json_roundtrip():
    p = Palette.identity(3)
    assert p.values == [(0,), (1,), (2,)]
    assert p.n_classes == 3 and p.channels == 1 and p.is_identity
    assert palette_for_classes(3) == p
    text = json.dumps(p.to_json())
    assert Palette.from_json(json.loads(text)) == p
    assert Palette.from_json(text) == p
    rgb = Palette([(0, 0, 0), (255, 0, 0)])
    assert rgb.channels == 3 and not rgb.is_identity
    assert Palette.from_json(json.dumps(rgb.to_json())) == rgb


def test_palette_normalises_numpy_entries():
    p = Palette([np.array([0]), np.uint8(255)])
    assert p.values == [(0,), (255,)]
    assert all(type(v[0]) is int for v in p.values)
    json.dumps(p.to_json())


@pytest.mark.parametrize("values", [[], [(0,), (0,)], [(0,), (0, 0, 0)]])
def test_palette_rejects_bad_values(values):
    with pytest.raises(ValueError):
        Palette(values)


# --- discover_palette -------------------------------------------------------------------


def test_discover_binary_index(tmp_path):
    paths = [_save(tmp_path / f"{i}.png", _blobs(i)) for i in range(3)]
    assert discover_palette(paths) == Palette.identity(2)


def test_discover_binary_0_255(tmp_path):
    paths = [_save(tmp_path / f"{i}.png", _blobs(i) * 255) for i in range(3)]
    assert discover_palette(paths).values == [(0,), (255,)]


def test_discover_index_with_class_absent_from_some_files(tmp_path):
    paths = [
        _save(tmp_path / "a.png", _blobs(0, n_classes=2)),  # only 0, 1
        _save(tmp_path / "b.png", _blobs(1, n_classes=4)),  # 0..3
        _save(tmp_path / "c.png", np.zeros((64, 64), np.uint8)),
    ]
    assert discover_palette(paths) == Palette.identity(4)


def test_discover_grey_levels_with_antialiasing(tmp_path):
    paths = []
    for i in range(3):
        m = np.array([0, 128, 255], np.uint8)[_blobs(i, n_classes=3)]
        m[0, :10] = np.arange(10) * 20 + 5  # a few anti-aliased edge values
        paths.append(_save(tmp_path / f"{i}.png", m))
    assert discover_palette(paths).values == [(0,), (128,), (255,)]


def test_discover_rgb_black_first_then_frequency(tmp_path):
    m = np.zeros((64, 64, 3), np.uint8)
    m[:10, :10] = (255, 0, 0)  # 100 px
    m[20:40, 20:40] = (0, 255, 0)  # 400 px, more frequent
    path = _save(tmp_path / "c.png", m)
    assert discover_palette([path]).values == [(0, 0, 0), (0, 255, 0), (255, 0, 0)]


def test_discover_grey_stored_as_rgb_is_grey(tmp_path):
    g = _blobs(0) * 255
    path = _save(tmp_path / "g.png", np.dstack([g, g, g]))
    assert discover_palette([path]).values == [(0,), (255,)]


def test_discover_mixed_grey_and_colour_files(tmp_path):
    c = np.zeros((32, 32, 3), np.uint8)
    c[:8, :8] = (255, 0, 0)
    g = np.zeros((32, 32, 3), np.uint8)
    g[10:20, 10:20] = 255  # a file with only black and white: stored as equal channels
    paths = [_save(tmp_path / "c.png", c), _save(tmp_path / "g.png", g)]
    assert discover_palette(paths).values == [(0, 0, 0), (255, 255, 255), (255, 0, 0)]


def test_discover_rare_stray_value_is_not_a_class(tmp_path):
    m = _blobs(0, 200, 200) * 255
    m[0, 0] = 7  # 1 pixel of 40000 < 0.05 %
    path = _save(tmp_path / "m.png", m)
    assert discover_palette([path]).values == [(0,), (255,)]
    mask, n = read_mask(path, discover_palette([path]))
    assert n == 1 and mask[0, 0] == 0


def _jpeg(array, quality):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_jpeg_damaged_binary_mask_snapped_with_count(tmp_path):
    truth = [_blobs(i, 128, 128) for i in range(3)]
    paths = []
    for i, t in enumerate(truth):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(_jpeg(t * 255, quality=75))
        paths.append(p)
    palette = discover_palette(paths)
    assert palette.values == [(0,), (255,)]
    mask, n_snapped = read_mask(paths[0], palette)
    assert mask.dtype == np.uint8 and mask.shape == (128, 128)
    assert n_snapped > 0
    raw = np.asarray(Image.open(paths[0]))
    assert n_snapped == int(np.count_nonzero((raw != 0) & (raw != 255)))
    assert (mask == truth[0]).mean() > 0.99


def test_discover_16bit_levels(tmp_path):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, _blobs(0).astype(np.uint16) * 65535)
    palette = discover_palette([path])
    assert palette.values == [(0,), (65535,)]
    mask, n = read_mask(path, palette)
    np.testing.assert_array_equal(mask, _blobs(0))
    assert n == 0


def test_discover_palette_mode_png_uses_indices(tmp_path):
    im = Image.fromarray(_blobs(0, n_classes=3), mode="P")
    im.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * 759)
    im.save(tmp_path / "p.png")
    assert discover_palette([tmp_path / "p.png"]) == Palette.identity(3)


def test_discover_intensity_image_is_not_a_mask(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    path = _save(tmp_path / "noise.png", noise)
    with pytest.raises(UserError, match="do not look like class masks"):
        discover_palette([path])


def test_discover_too_many_classes(tmp_path):
    levels = np.arange(40, dtype=np.uint8) * 6  # 40 well separated grey levels
    path = _save(tmp_path / "many.png", np.repeat(levels, 40)[None, :].repeat(8, axis=0))
    with pytest.raises(UserError, match="more than 32 distinct values"):
        discover_palette([path])
    assert discover_palette([path], max_classes=40).n_classes == 40


def test_discover_no_files():
    with pytest.raises(UserError):
        discover_palette([])


def test_discover_samples_a_limited_number_of_files(tmp_path, monkeypatch):
    paths = [_save(tmp_path / f"{i}.png", _blobs(i)) for i in range(6)]
    read = []
    real = masks_mod.read_raw
    monkeypatch.setattr(masks_mod, "MAX_SAMPLE_FILES", 3)
    monkeypatch.setattr(masks_mod, "read_raw", lambda p: read.append(p) or real(p))
    assert discover_palette(paths) == Palette.identity(2)
    assert read == [paths[0], paths[2], paths[5]]  # evenly spread, first and last included


# --- read_mask ----------------------------------------------------------------------------


def test_read_mask_identity(tmp_path):
    m = _blobs(3, n_classes=3)
    path = _save(tmp_path / "m.png", m)
    mask, n = read_mask(path, Palette.identity(3), strict_index=True)
    np.testing.assert_array_equal(mask, m)
    assert n == 0 and mask.dtype == np.uint8


def test_read_mask_0_255(tmp_path):
    m = _blobs(4)
    path = _save(tmp_path / "m.png", m * 255)
    mask, n = read_mask(path, Palette([(0,), (255,)]))
    np.testing.assert_array_equal(mask, m)
    assert n == 0


def test_read_mask_rgb_and_grey_mask_against_rgb_palette(tmp_path):
    palette = Palette([(0, 0, 0), (0, 255, 0), (255, 0, 0)])
    m = _blobs(5, n_classes=3)
    colours = np.array(palette.values, np.uint8)
    path = _save(tmp_path / "c.png", colours[m])
    mask, n = read_mask(path, palette)
    np.testing.assert_array_equal(mask, m)
    assert n == 0
    grey = _save(tmp_path / "g.png", np.zeros((8, 8), np.uint8))
    mask, n = read_mask(grey, palette)
    assert (mask == 0).all() and n == 0


def test_read_mask_strict_index_value_outside_classes(tmp_path):
    m = _blobs(0, n_classes=2)
    m[0, 0] = 7
    path = _save(tmp_path / "bad.png", m)
    with pytest.raises(UserError) as info:
        read_mask(path, palette_for_classes(3), strict_index=True)
    msg = str(info.value)
    assert msg.startswith(f"{path}: mask value 7 is outside the 3 configured classes")
    # without strict_index the value is snapped to the nearest class and counted
    mask, n = read_mask(path, palette_for_classes(3))
    assert mask[0, 0] == 2 and n == 1


def test_read_mask_colour_mask_with_grey_palette(tmp_path):
    m = np.zeros((8, 8, 3), np.uint8)
    m[0, 0] = (255, 0, 0)
    path = _save(tmp_path / "c.png", m)
    with pytest.raises(UserError, match="c.png: mask is a colour"):
        read_mask(path, Palette.identity(2))


def test_read_mask_float_tiff(tmp_path):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, _blobs(1).astype(np.float32))
    mask, n = read_mask(path, Palette.identity(2), strict_index=True)
    np.testing.assert_array_equal(mask, _blobs(1))


def test_discover_antialiased_rgb_mask(tmp_path):
    rng = np.random.default_rng(1)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    paths = []
    for i in range(3):
        m = np.zeros((100, 100, 3), np.uint8)
        for col in colours:
            y, x = rng.integers(0, 70, 2)
            m[y : y + 25, x : x + 25] = col
        path = tmp_path / f"{i}.png"
        Image.fromarray(m).resize((217, 217), Image.BILINEAR).save(path)  # blended edges
        paths.append(path)
    palette = discover_palette(paths)
    assert palette.values[0] == (0, 0, 0)
    assert sorted(palette.values[1:]) == sorted(colours)
    mask, n_snapped = read_mask(paths[0], palette)
    assert n_snapped > 0 and mask.max() <= 4


def test_palette_ignores_jpeg_masks_when_lossless_ones_exist(tmp_path):
    from PIL import Image

    from biomedseg.io import discover_palette

    m = np.zeros((40, 40), np.uint8)
    m[10:30, 10:30] = 255
    Image.fromarray(m).save(tmp_path / "a.png")
    damaged = m.copy()
    damaged[m == 0] = 1  # what JPEG does to a black background
    damaged[0, 0] = 3
    Image.fromarray(damaged).save(tmp_path / "b.jpg", quality=60)
    assert discover_palette([tmp_path / "a.png", tmp_path / "b.jpg"]).values == [(0,), (255,)]
