"""Tests for biomedseg.io.sources: one reader, one set of rules, for every format, the same answer
for ``tile``, streamed ``predict`` and ``read_image``; decompression bombs refused from the header."""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.io import read_image, read_raw
from biomedseg.io.sources import MAX_DECODE_PIXELS, open_source

RNG = np.random.default_rng(0)
PILLOW_DEFAULT_LIMIT = int(1024 * 1024 * 1024 // 4 // 3)  # Pillow's documented default


def _rgb(h, w):
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _grey(h, w):
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


@pytest.fixture
def decodes(monkeypatch):
    """Count TIFF chunk (tile/strip) decodes, whoever asks for them (zarr store or ``asarray``)."""
    calls = []
    original = tifffile.TiffPage.__dict__["decode"]

    def counting(page):
        decode = original.func(page)

        def counted(*args, **kwargs):
            calls.append(1)
            return decode(*args, **kwargs)

        return counted

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counting))
    return calls


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(path, side: int) -> None:
    """A valid grey 8-bit PNG of ``side`` x ``side`` zeros: a few hundred kB that decode to
    ``side**2`` bytes. Deflate blocks after a full flush repeat, so it is built from one block."""
    rows = 500
    block = bytes((side + 1) * rows)  # filter byte 0 + the row's zeros
    comp = zlib.compressobj(9)
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(side // rows):
        adler = zlib.adler32(block, adler)
    data = first + again * (side // rows - 1) + b"\x03\x00" + struct.pack(">I", adler)  # final empty block
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    _bomb_png(path, 30000)  # 900 megapixels declared
    assert path.stat().st_size < 1_000_000
    return path


# ----------------------------------------------------------------------------- TIFF
def test_tiled_bigtiff_pyramid_is_read_window_by_window(tmp_path, decodes):
    img = _rgb(300, 260)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(
            img,
            tile=(64, 64),
            compression="zlib",
            photometric="rgb",
            subifds=1,
            resolution=(1e4 / 0.5, 1e4 / 0.5),
            resolutionunit="CENTIMETER",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
        tw.write(img[::2, ::2], tile=(64, 64), compression="zlib", photometric="rgb", subfiletype=1)
    with open_source(path) as src:
        assert (src.kind, src.shape, src.levels, src.level_shapes) == ("tiff", (300, 260), 2, [(300, 260), (150, 130)])
        assert src.channels == 3 and src.dtype == np.uint8 and src.tile == (64, 64)
        assert src.pixel_size == (0.5, 0.5)
        assert decodes == []  # the header only
        win = src.read(70, 70, 50, 50)  # inside tile (1, 1)
        assert np.array_equal(win, img[70:120, 70:120]) and len(decodes) == 1
        assert np.array_equal(src.read(250, 200, 100, 100), img[250:, 200:])  # clipped at the border
    with open_source(path, level=1) as src:
        assert src.shape == (150, 130) and src.downsample == (2.0, 2.0) and src.pixel_size == (1.0, 1.0)
        assert np.array_equal(src.read(10, 20, 30, 40), img[::2, ::2][10:40, 20:60])
    # windows need no whole decode: a level above the decode cap is read by windows, refused whole
    with open_source(path, max_decode_pixels=64 * 64 * 2) as src:
        assert np.array_equal(src.read(0, 0, 64, 128), img[:64, :128])
        with pytest.raises(UserError, match=r"slide\.tif: is 260x300 .* above the 0.00819-megapixel limit"):
            src.read_all()
    with pytest.raises(UserError, match=r"slide\.tif: has no level 2 \(it has 2 resolution levels"):
        open_source(path, level=2)


def test_strip_tiff_windows_and_whole(tmp_path):
    img = _grey(200, 150).astype(np.uint16) * 200
    tifffile.imwrite(tmp_path / "s.tif", img, compression="zlib", rowsperstrip=16)
    with open_source(tmp_path / "s.tif") as src:
        assert src.tile is None and src.dtype == np.uint16
        assert np.array_equal(src.read(30, 40, 50, 60)[..., 0], img[30:80, 40:100])
        assert np.array_equal(src.read_all()[..., 0], img)
    assert np.array_equal(read_image(tmp_path / "s.tif")[..., 0], img)


def test_one_strip_compressed_tiff_is_decoded_once_and_cached(tmp_path, decodes, monkeypatch):
    """Every band of a one-strip image touches the strip: it is decoded once, not once per band."""
    import biomedseg.io.sources.tiff as tiff_source
    from biomedseg.stream.sources import open_source as stream_source

    monkeypatch.setattr(tiff_source, "LARGE_CHUNK_PIXELS", 10_000)  # the rule's threshold, scaled down
    img = _grey(600, 500)
    tifffile.imwrite(tmp_path / "one.tif", img, compression="zlib", rowsperstrip=600)
    with stream_source(tmp_path / "one.tif") as src:
        bands = [src.read_rows(y, min(y + 64, 600)) for y in range(0, 600, 64)]
    assert np.array_equal(np.concatenate(bands)[..., 0], img)
    assert len(decodes) == 1
    # above the decode cap the strip cannot be decoded within the limit: refused, with what to do
    with open_source(tmp_path / "one.tif", max_decode_pixels=100_000) as src:
        assert src.shape == (600, 500)  # the header is still readable
        with pytest.raises(
            UserError,
            match=r"one\.tif: is stored in strips of 0.3 megapixels, above the "
            r"0.1-megapixel.*tiled TIFF",
        ):
            src.read(0, 0, 10, 10)


def test_uncompressed_tiff_is_memory_mapped_not_decoded(tmp_path, decodes):
    img = _rgb(120, 90)
    tifffile.imwrite(tmp_path / "raw.tif", img, photometric="rgb", metadata=None)
    with open_source(tmp_path / "raw.tif", max_decode_pixels=100) as src:  # far below one strip
        assert np.array_equal(src.read(5, 6, 7, 8), img[5:12, 6:14])
    assert decodes == []


def test_palette_tiff_expanded_for_images_indices_for_masks(tmp_path):
    idx = RNG.integers(0, 3, size=(90, 70)).astype(np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 1], cmap[:, 2] = (65535, 0, 32896), (0, 65535, 0)
    tifffile.imwrite(tmp_path / "p.tif", idx, photometric="palette", colormap=cmap, tile=(32, 32))
    colours = (cmap // 257).astype(np.uint8).T[idx]
    with open_source(tmp_path / "p.tif") as src:
        assert src.channels == 3
        assert np.array_equal(src.read(10, 20, 30, 40), colours[10:40, 20:60])
    with open_source(tmp_path / "p.tif", raw=True) as src:
        assert np.array_equal(src.read(10, 20, 30, 40), idx[10:40, 20:60])
    assert np.array_equal(read_image(tmp_path / "p.tif"), colours)
    assert np.array_equal(read_raw(tmp_path / "p.tif"), idx)


def test_page_stack_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 20, 30), np.uint8))
    with pytest.raises(UserError, match=r"stack\.tif: cannot read image \(has 5 pages or planes of 20x30"):
        open_source(tmp_path / "stack.tif")


# ----------------------------------------------------------------------------- same answer everywhere
def _palette_tiff(path):
    idx = np.zeros((150, 130), np.uint8)
    idx[20:90, 30:100] = 1
    idx[100:140, 10:60] = 2
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 0], cmap[:, 1], cmap[:, 2] = (0, 0, 0), (65535, 65535, 65535), (0, 30000, 65535)
    tifffile.imwrite(path, idx, photometric="palette", colormap=cmap)


def _one_strip_tiff(path):
    img = np.zeros((150, 130, 3), np.uint8)
    img[30:120, 40:110] = (230, 210, 200)
    img[60:80] += RNG.integers(0, 20, size=(20, 130, 3), dtype=np.uint8)
    tifffile.imwrite(path, img, photometric="rgb", compression="zlib", rowsperstrip=150)


def _tiles(out, shape):
    rec = np.zeros(shape + (3,), np.uint8)
    with open(out / "tiles.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            x, y, w, h = (int(r[k]) for k in ("x", "y", "w", "h"))
            rec[y : y + h, x : x + w] = read_image(out / "images" / r["file"])
    return rec


@pytest.mark.parametrize("make", [_palette_tiff, _one_strip_tiff], ids=["palette", "one-strip"])
def test_tile_streamed_predict_and_read_image_agree(make, tmp_path, threshold_run, one_thread):
    from biomedseg.data.tiling.dataset import tile_dataset
    from biomedseg.inference.predict.batch import predict
    from biomedseg.stream.sources import open_source as stream_source

    path = tmp_path / "in.tif"
    make(path)
    whole = read_image(path)
    assert whole.shape == (150, 130, 3)
    tile_dataset(path, tmp_path / "tiles", size=64, keep_empty=1.0, progress=False)
    assert np.array_equal(_tiles(tmp_path / "tiles", (150, 130)), whole)
    with stream_source(path) as src:
        assert np.array_equal(np.concatenate([src.read_rows(y, min(y + 32, 150)) for y in range(0, 150, 32)]), whole)
    streamed = predict(
        threshold_run, [path], tmp_path / "streamed", stream=True, quiet=True, overlays=False, compile="off"
    )
    in_memory = predict(
        threshold_run, [path], tmp_path / "memory", stream=False, quiet=True, overlays=False, compile="off"
    )
    assert streamed.streamed == [path] and in_memory.done == [path] and not in_memory.streamed
    a, b = tifffile.imread(tmp_path / "streamed" / "in.tif"), read_raw(tmp_path / "memory" / "in.png")
    assert a.any() and np.array_equal(a, b)


# ----------------------------------------------------------------------------- PNG / JPEG / BMP
@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp")])
def test_whole_formats_are_decoded_once_and_windowed(fmt, ext, tmp_path):
    img = _rgb(80, 60)
    Image.fromarray(img).save(tmp_path / f"a{ext}", format=fmt)
    with open_source(tmp_path / f"a{ext}") as src:
        assert src.kind == fmt.lower() and src.shape == (80, 60) and src.levels == 1 and src.pixel_size is None
        whole = src.read_all()
        assert np.array_equal(src.read(10, 5, 20, 30), whole[10:30, 5:35])
    assert np.array_equal(whole, read_image(tmp_path / f"a{ext}"))
    if fmt != "JPEG":
        assert np.array_equal(whole, img)
    with pytest.raises(UserError, match=r"has no level 1 \(only TIFF and zarr"):
        open_source(tmp_path / f"a{ext}", level=1)


def test_png_above_the_cap_is_one_line_that_says_what_to_do(tmp_path):
    Image.fromarray(_grey(300, 400)).save(tmp_path / "a.png")
    with open_source(tmp_path / "a.png", max_decode_pixels=100_000) as src:
        assert src.shape == (300, 400)  # the header is read, nothing decoded
        with pytest.raises(UserError) as err:
            src.read(0, 0, 10, 10)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'a.png'}: is 400x300 (0.12 megapixels), above the 0.1-megapixel")
    assert "PNG is decoded whole, it has no windows: convert it to a tiled TIFF (e.g. `vips tiffsave" in msg


def test_16bit_colour_png(tmp_path):
    import imagecodecs

    img = RNG.integers(0, 65536, size=(30, 40, 3), dtype=np.uint16)
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(img))
    with open_source(tmp_path / "c.png") as src:
        assert src.shape == (30, 40) and src.dtype == np.uint16
        assert np.array_equal(src.read(3, 4, 5, 6), img[3:8, 4:10])


# ----------------------------------------------------------------------------- zarr
def test_zarr_windows_levels_and_cap(tmp_path):
    zarr = pytest.importorskip("zarr")
    img = _grey(120, 100)
    root = zarr.open_group(str(tmp_path / "z.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=img, chunks=(32, 32))
    root.create_array("1", data=img[::2, ::2], chunks=(32, 32))
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.25, 0.25]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]},
            ],
        }
    ]
    with open_source(tmp_path / "z.zarr", level=1) as src:
        assert src.kind == "zarr" and src.level_shapes == [(120, 100), (60, 50)] and src.tile == (32, 32)
        assert src.pixel_size == (0.5, 0.5)
        assert np.array_equal(src.read(10, 10, 20, 30)[..., 0], img[::2, ::2][10:30, 10:40])
    with open_source(tmp_path / "z.zarr", max_decode_pixels=5000) as src:
        assert np.array_equal(src.read(0, 0, 40, 40)[..., 0], img[:40, :40])
        with pytest.raises(UserError, match=r"z\.zarr: is 100x120 .*biomedseg tile"):
            src.read_all()


# ----------------------------------------------------------------------------- decompression bombs
def test_bomb_png_is_refused_from_the_header(bomb):
    assert open_source(bomb).shape == (30000, 30000)  # its size is known without decoding
    for read in (read_image, read_raw):
        with pytest.raises(UserError) as err:
            read(bomb)
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith(f"{bomb}: is 30000x30000 (900 megapixels), above the 150-megapixel limit")
        assert "tiled TIFF" in msg


def test_pillow_limit_unchanged_by_import_and_reading(tmp_path, bomb):
    code = (
        "from PIL import Image\n"
        "before = Image.MAX_IMAGE_PIXELS\n"
        "import biomedseg, biomedseg.io, biomedseg.cli\n"
        "assert Image.MAX_IMAGE_PIXELS == before, Image.MAX_IMAGE_PIXELS\n"
        "print(before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == PILLOW_DEFAULT_LIMIT
    with pytest.raises(UserError):
        read_image(bomb)
    # an image above Pillow's own warning threshold but under our cap: read, no bomb warning
    side = 9500  # 90.25 megapixels > Pillow's 89.5
    _bomb_png(tmp_path / "big.png", side)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_source(tmp_path / "big.png") as src:
            assert src.shape == (side, side) and side * side < MAX_DECODE_PIXELS
            assert src.read(100, 200, 3, 4).shape == (3, 4, 1)
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT


def test_bomb_in_predict_fails_alone_and_in_the_cli(
    bomb, tmp_path, threshold_run, monkeypatch, capsys, caplog, one_thread
):
    from biomedseg.cli import main
    from biomedseg.inference.predict.batch import predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(_grey(40, 50)).save(inputs / "good.png")
    (inputs / "bomb.png").write_bytes(bomb.read_bytes())
    s = predict(threshold_run, [inputs], tmp_path / "out", quiet=True, compile="auto")
    assert s.done == [inputs / "good.png"] and (tmp_path / "out" / "good.png").is_file()
    assert [p for p, _ in s.failed] == [inputs / "bomb.png"] and "900 megapixels" in s.failed[0][1]
    # the command line: one line per failure (logged), no traceback; `tile` of the bomb exits 2
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "biomedseg",
            "predict",
            str(threshold_run),
            str(inputs),
            "--out",
            str(tmp_path / "cli"),
            "--quiet",
            "--compile",
            "off",
        ],
    )
    caplog.clear()
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err + caplog.text
    assert exc.value.code == 1 and "Traceback" not in err and "MemoryError" not in err
    assert (tmp_path / "cli" / "good.png").is_file()
    lines = [r.getMessage() for r in caplog.records if "bomb.png" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].endswith(
        "convert it to a tiled TIFF (e.g. `vips tiffsave in.png out.tif --tile --pyramid --compression deflate`)"
    )
    monkeypatch.setattr(sys, "argv", ["biomedseg", "tile", str(bomb), "--out", str(tmp_path / "tiles")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "bomb.png: is 30000x30000" in err


def test_bomb_in_audit_is_an_unreadable_file(bomb, tmp_path):
    from biomedseg.audit.run import run_audit

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(_grey(40, 50)).save(data / "images" / f"{name}.png")
        Image.fromarray((_grey(40, 50) > 128).astype(np.uint8)).save(data / "masks" / f"{name}.png")
    (data / "images" / "c.png").write_bytes(bomb.read_bytes())
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(data / "masks" / "c.png")
    result = run_audit(data, progress=False)
    unreadable = result["inventory"]["unreadable"]
    assert [u["file"] for u in unreadable] == ["images/c.png"]
    assert "900 megapixels" in unreadable[0]["error"]
