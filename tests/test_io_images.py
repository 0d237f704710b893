"""Tests for biomedseg.io.images: every format, bit depth and channel layout, and errors."""

from __future__ import annotations

import struct
import zlib

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.io.images import (
    IMAGE_EXTENSIONS,
    conform_channels,
    image_shape,
    is_grey_rgb,
    is_image_file,
    read_image,
    read_raw,
)

RNG = np.random.default_rng(0)


def _grey(h=20, w=30, dtype=np.uint8):
    hi = np.iinfo(dtype).max
    return RNG.integers(0, hi, size=(h, w), endpoint=True).astype(dtype)


def _rgb(h=20, w=30):
    return RNG.integers(0, 255, size=(h, w, 3), endpoint=True).astype(np.uint8)


def test_extensions(tmp_path):
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
    # every listed extension is found (in any case, unless hidden) and reads back as an image
    a = _grey()
    for ext in sorted(IMAGE_EXTENSIONS):
        path = tmp_path / f"g{ext}"
        if ext in (".tif", ".tiff"):
            tifffile.imwrite(path, a)
        else:
            Image.fromarray(a).save(path)
        assert is_image_file(path) and is_image_file(tmp_path / f"G{ext.upper()}")
        assert not is_image_file(tmp_path / f".g{ext}")
        out = read_image(path)
        assert out.shape == (20, 30, 1) and out.dtype == np.uint8
        if ext not in (".jpg", ".jpeg"):  # lossless
            np.testing.assert_array_equal(out[..., 0], a)
    # a format Pillow reads but that is not listed is not taken for an image
    Image.fromarray(a).save(tmp_path / "g.gif")
    assert not is_image_file(tmp_path / "g.gif")


def test_pillow_bomb_limit_left_as_the_user_has_it():
    # importing biomedseg (done above) changes no process-wide Pillow setting
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


def test_png_grey_8bit(tmp_path):
    a = _grey()
    Image.fromarray(a).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (20, 30, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], a)


def test_png_grey_16bit_kept(tmp_path):
    a = _grey(dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[..., 0], a)


def test_png_rgb16_kept(tmp_path):
    a = RNG.integers(0, 65535, size=(12, 9, 3)).astype(np.uint16)
    (tmp_path / "c16.png").write_bytes(imagecodecs.png_encode(a))
    out = read_image(tmp_path / "c16.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, a)
    assert image_shape(tmp_path / "c16.png") == (12, 9)


def test_png_rgb_and_rgba_alpha_dropped(tmp_path):
    rgb = _rgb()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)  # colour kept, not premultiplied


def test_png_la_becomes_grey(tmp_path):
    a = _grey()
    Image.fromarray(np.dstack([a, np.zeros_like(a)]), mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out.shape == (20, 30, 1)
    np.testing.assert_array_equal(out[..., 0], a)


def test_palette_png_expanded_for_images_indices_for_raw(tmp_path):
    idx = RNG.integers(0, 3, size=(10, 11)).astype(np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (10, 11, 3)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(out, colours[idx])
    np.testing.assert_array_equal(read_raw(tmp_path / "p.png"), idx)


def test_bilevel_png(tmp_path):
    a = RNG.integers(0, 2, size=(8, 16)).astype(bool)
    Image.fromarray(a).save(tmp_path / "b.png")
    out = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[..., 0], a.astype(np.uint8) * 255)


def test_jpeg_grey_and_rgb(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))
    Image.fromarray(smooth).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(np.dstack([smooth] * 3)).save(tmp_path / "c.jpeg", quality=95)
    g = read_image(tmp_path / "g.jpg")
    c = read_image(tmp_path / "c.jpeg")
    assert g.shape == (24, 32, 1) and c.shape == (24, 32, 3)
    assert np.abs(g[..., 0].astype(int) - smooth).max() <= 8


def test_bmp(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "x.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "x.bmp"), a)
    assert image_shape(tmp_path / "x.bmp") == (20, 30)


@pytest.mark.parametrize("compression", [None, "lzw", "zlib"])
def test_tiff_compressions(tmp_path, compression):
    a = _grey(dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a, compression=compression)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.uint16 and out.shape == (20, 30, 1)
    np.testing.assert_array_equal(out[..., 0], a)


def test_bigtiff_rgb(tmp_path):
    a = _rgb()
    tifffile.imwrite(tmp_path / "big.tiff", a, bigtiff=True, photometric="rgb")
    with tifffile.TiffFile(tmp_path / "big.tiff") as tif:
        assert tif.is_bigtiff
    np.testing.assert_array_equal(read_image(tmp_path / "big.tiff"), a)
    assert image_shape(tmp_path / "big.tiff") == (20, 30)


def test_tiff_single_page_stack_squeezed(tmp_path):
    a = _grey()
    tifffile.imwrite(tmp_path / "s.tif", a[None])
    assert read_image(tmp_path / "s.tif").shape == (20, 30, 1)
    assert image_shape(tmp_path / "s.tif") == (20, 30)


@pytest.mark.parametrize("channels", [3, 4])
def test_tiff_planar_to_hwc(tmp_path, channels):
    planar = RNG.integers(0, 255, size=(channels, 20, 30)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="rgb", planarconfig="separate")
    out = read_image(tmp_path / "p.tif")
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, np.moveaxis(planar[:3], 0, -1))
    assert image_shape(tmp_path / "p.tif") == (20, 30)


def test_tiff_float_stays_float32(tmp_path):
    a = RNG.random((6, 7))
    tifffile.imwrite(tmp_path / "f.tif", a)  # float64
    out = read_image(tmp_path / "f.tif")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], a, rtol=1e-6)


def test_tiff_multipage_stack_is_an_error(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 20, 30), np.uint8))
    with pytest.raises(UserError, match=r"stack\.tif: .*5 pages"):
        read_image(tmp_path / "stack.tif")


def test_decoder_chosen_by_content_not_extension(tmp_path):
    a = _grey()
    Image.fromarray(a).save(tmp_path / "really_png.tif", format="PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "really_png.tif")[..., 0], a)


def _assert_one_line_error(path, reason_pattern):
    with pytest.raises(UserError) as info:
        read_image(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: cannot read image (")
    assert "\n" not in msg
    assert reason_pattern in msg


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _assert_one_line_error(path, "not a recognised image file")
    with pytest.raises(UserError, match="notes.png"):
        image_shape(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_one_line_error(path, "file is empty")


def test_missing_file(tmp_path):
    _assert_one_line_error(tmp_path / "nope.png", "file not found")


def test_truncated_png(tmp_path):
    path = tmp_path / "trunc.png"
    Image.fromarray(_rgb(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_one_line_error(path, "")


def test_corrupt_png_data(tmp_path):
    path = tmp_path / "bad.png"
    Image.fromarray(_rgb(64, 64)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 200] = bytes(200)  # zeroed compressed data: bad CRC / zlib stream
    path.write_bytes(bytes(data))
    _assert_one_line_error(path, "")


def test_corrupt_tiff(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 20)
    _assert_one_line_error(path, "")


def _png_header_only(width, height):
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_huge_image_header_is_not_refused(tmp_path):
    # 60000 x 60000 = 3.6 gigapixels: Pillow's default limit would raise here.
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(60000, 60000))
    assert image_shape(path) == (60000, 60000)


def test_is_grey_rgb():
    g = _grey()
    assert is_grey_rgb(g)
    assert is_grey_rgb(g[..., None])
    assert is_grey_rgb(np.dstack([g, g, g]))
    c = np.dstack([g, g, g])
    c[3, 4, 1] ^= 1
    assert not is_grey_rgb(c)


def test_conform_channels():
    g = _grey()[..., None]
    three = conform_channels(g, 3)
    assert three.shape == (20, 30, 3) and three.dtype == np.uint8
    np.testing.assert_array_equal(three[..., 2], g[..., 0])
    np.testing.assert_array_equal(conform_channels(three, 1), g)  # grey RGB -> channel 0
    colour = np.zeros((2, 2, 3), np.uint16)
    colour[..., 0] = 1000
    luma = conform_channels(colour, 1)
    assert luma.dtype == np.uint16 and luma.shape == (2, 2, 1)
    assert int(luma[0, 0, 0]) == 299
    assert conform_channels(g[..., 0], 1).shape == (20, 30, 1)
    with pytest.raises(ValueError):
        conform_channels(g, 2)


def test_palette_tiff_expanded(tmp_path):
    idx = RNG.integers(0, 2, size=(6, 5)).astype(np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 1] = (65535, 0, 32896)  # 16-bit TIFF colormap entries
    tifffile.imwrite(tmp_path / "p.tif", idx, photometric="palette", colormap=cmap)
    out = read_image(tmp_path / "p.tif")
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[idx == 1][0], (255, 0, 128))
    np.testing.assert_array_equal(read_raw(tmp_path / "p.tif"), idx)


def test_integer_tiff_dtypes_normalised(tmp_path):
    tifffile.imwrite(tmp_path / "u32.tif", np.array([[0, 70000]], np.uint32).repeat(4, 0))
    tifffile.imwrite(tmp_path / "u32s.tif", np.array([[0, 4000]], np.uint32).repeat(4, 0))
    tifffile.imwrite(tmp_path / "i16.tif", np.array([[-5, 7]], np.int16).repeat(4, 0))
    assert read_image(tmp_path / "u32.tif").dtype == np.float32
    assert read_image(tmp_path / "u32s.tif").dtype == np.uint16
    out = read_image(tmp_path / "i16.tif")
    assert out.dtype == np.float32 and out[0, 0, 0] == -5
