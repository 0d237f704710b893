"""Tests for biomedseg.io.writers: round trips and atomicity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import biomedseg.io.writers as writers
from biomedseg.io.writers import atomic_path, write_json, write_png, write_text, write_tiff

RNG = np.random.default_rng(0)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "array",
    [
        RNG.integers(0, 256, (9, 13)).astype(np.uint8),
        RNG.integers(0, 65536, (9, 13)).astype(np.uint16),
        RNG.integers(0, 256, (9, 13, 3)).astype(np.uint8),
    ],
)
@pytest.mark.parametrize("preview", [False, True])
def test_write_png_roundtrip(tmp_path, array, preview):
    path = tmp_path / "out.png"
    write_png(path, array, preview=preview)  # a preview is compressed faster, still lossless
    back = np.asarray(Image.open(path))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert _leftovers(tmp_path) == []


def test_write_png_single_channel_and_parent_creation(tmp_path):
    path = tmp_path / "a" / "b" / "m.png"
    write_png(path, np.ones((4, 5, 1), np.uint8))
    assert np.asarray(Image.open(path)).shape == (4, 5)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4), np.float32),
        np.zeros((4, 4, 3), np.uint16),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros(4, np.uint8),
    ],
)
def test_write_png_rejects_unsupported(tmp_path, array):
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", array)
    assert list(tmp_path.iterdir()) == []


def test_write_tiff_small_roundtrip(tmp_path):
    a = RNG.random((30, 20)).astype(np.float32)
    write_tiff(tmp_path / "p.tif", a)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "p.tif"), a)
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert not tif.pages[0].is_tiled


def test_write_tiff_large_is_tiled_rgb(tmp_path):
    a = np.zeros((1100, 1000, 3), np.uint8)
    a[100:200, 300:700] = (10, 200, 30)
    write_tiff(tmp_path / "big.tif", a)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256
        np.testing.assert_array_equal(page.asarray(), a)
    assert (tmp_path / "big.tif").stat().st_size < a.nbytes / 10  # compressed


def test_write_tiff_bigtiff_when_large(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "BIGTIFF_BYTES", 100)
    write_tiff(tmp_path / "b.tif", np.ones((20, 20), np.uint16), tile=(16, 16))
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled


def test_atomic_path_success(tmp_path):
    target = tmp_path / "x.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".npy"
        np.save(tmp, np.arange(3))
        assert not target.exists()
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half writ")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_write_png_failure_mid_write(tmp_path, monkeypatch):
    target = tmp_path / "m.png"
    write_png(target, np.zeros((3, 3), np.uint8))
    before = target.read_bytes()

    def broken_save(self, fp, format=None, **kw):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(target, np.ones((3, 3), np.uint8))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_write_json_converts_numpy_paths_and_nan(tmp_path):
    obj = {
        "a": np.float32(0.5),
        "b": np.arange(3),
        "c": Path("x/y.png"),
        "d": math.nan,
        "e": (1, np.int64(2)),
        3: {"f": float("inf")},
    }
    write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_text()
    assert text.endswith("\n")
    assert json.loads(text) == {"a": 0.5, "b": [0, 1, 2], "c": "x/y.png", "d": None, "e": [1, 2], "3": {"f": None}}


def test_write_text_utf8(tmp_path):
    write_text(tmp_path / "t.md", "µm ✓\nline 2\n")
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == "µm ✓\nline 2\n"
    write_text(tmp_path / "t.md", "new")
    assert (tmp_path / "t.md").read_text() == "new"
