"""Tiling large images into a DATA folder: exact reassembly, selection, provenance, TIFF input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.data.tiling.dataset import tile_dataset, tissue_fraction, window_starts
from biomedseg.io import read_image, read_raw
from biomedseg.io.sources import open_source


def _pair(rng, h: int, w: int, blobs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for k in range(blobs):
        y, x = int(rng.integers(0, h - 30)), int(rng.integers(0, w - 30))
        mask[y : y + 25, x : x + 25] = 1 + k % 2
    return img, mask


def _rows(out: Path) -> list[dict]:
    with open(out / "tiles.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _reassemble(out: Path, shape, channels=3):
    img = np.zeros(shape + ((channels,) if channels > 1 else ()), np.uint8)
    mask = np.full(shape, 255, np.uint8)
    covered = np.zeros(shape, bool)
    for r in _rows(out):
        x, y, w, h = (int(r[k]) for k in ("x", "y", "w", "h"))
        tile = read_image(out / "images" / r["file"])
        assert tile.shape[:2] == (h, w)
        img[y : y + h, x : x + w] = tile if channels > 1 else tile[:, :, 0]
        mask[y : y + h, x : x + w] = read_raw(out / "masks" / f"{r['tile_id']}.png")
        covered[y : y + h, x : x + w] = True
    return img, mask, covered


def test_window_starts_cover_and_stay_inside():
    assert window_starts(1000, 256, 256) == [0, 256, 512, 744]
    assert window_starts(512, 256, 256) == [0, 256]
    assert window_starts(100, 256, 256) == [0]
    assert window_starts(700, 256, 128)[-1] == 700 - 256
    for length in (257, 600, 1023):
        for stride in (100, 256):
            starts = window_starts(length, 256, stride)
            assert starts[0] == 0 and starts[-1] + 256 == length
            assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_png_folder_reassembles_exactly_with_provenance(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    shapes = {"s1": (300, 410), "s2": (200, 150)}  # s2 smaller than a tile in one direction
    for sid, (h, w) in shapes.items():
        img, mask = _pair(rng, h, w)
        (src / "images").mkdir(parents=True, exist_ok=True)
        (src / "masks").mkdir(exist_ok=True)
        Image.fromarray(img).save(src / "images" / f"{sid}.png")
        Image.fromarray(mask).save(src / "masks" / f"{sid}.png")
    (src / "dataset.json").write_text(
        json.dumps({"name": "src", "classes": ["background", "a", "b"], "split": {"train": ["s1"], "test": ["s2"]}})
    )
    out = tmp_path / "tiles"
    summary = tile_dataset(src, out, size=128, keep_empty=1.0, progress=False)
    assert summary["n_tiles"] == 3 * 4 + 2 * 2
    for sid, (h, w) in shapes.items():
        sub = out / sid
        sub.mkdir()
        rows = [r for r in _rows(out) if r["tile_id"].startswith(sid + "_")]
        assert all(r["source_image"].endswith(f"{sid}.png") and r["level"] == "0" for r in rows)
        with open(sub / "tiles.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (sub / "images").symlink_to(out / "images")
        (sub / "masks").symlink_to(out / "masks")
        img, mask, covered = _reassemble(sub, (h, w))
        assert covered.all()
        assert np.array_equal(img, read_image(src / "images" / f"{sid}.png"))
        assert np.array_equal(mask, read_raw(src / "masks" / f"{sid}.png"))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == ["background", "a", "b"]
    assert meta["tiling"]["seed"] == 0 and meta["tiling"]["size"] == 128
    assert set(meta["split"]["test"]) == {r["tile_id"] for r in _rows(out) if r["tile_id"].startswith("s2_")}
    with pytest.raises(UserError, match="already holds files"):
        tile_dataset(src, out, size=128, progress=False)


def test_background_filter_keeps_its_fraction(tmp_path):
    rng = np.random.default_rng(1)
    img, mask = _pair(rng, 640, 640, blobs=2)
    Image.fromarray(img).save(tmp_path / "big.png")
    Image.fromarray(mask).save(tmp_path / "big_mask.png")
    n_windows = 10 * 10
    labelled = {(y, x) for y in range(0, 640, 64) for x in range(0, 640, 64) if mask[y : y + 64, x : x + 64].any()}
    n_empty = n_windows - len(labelled)
    kept = {}
    for seed, frac in ((0, 0.25), (1, 0.25), (0, 0.0)):
        out = tmp_path / f"t{seed}_{frac}"
        s = tile_dataset(tmp_path / "big.png", out, size=64, keep_empty=frac, seed=seed, progress=False)
        assert s["n_empty"] == n_empty
        assert s["n_empty_kept"] == round(frac * n_empty)
        assert s["n_tiles"] == len(labelled) + round(frac * n_empty)
        rows = _rows(out)
        assert {(int(r["y"]), int(r["x"])) for r in rows if r["empty"] == "0"} == labelled
        kept[(seed, frac)] = {r["tile_id"] for r in rows if r["empty"] == "1"}
        assert json.loads((out / "dataset.json").read_text())["tiling"]["seed"] == seed
    assert kept[(0, 0.25)] != kept[(1, 0.25)]  # the seed picks the empty tiles
    again = tile_dataset(tmp_path / "big.png", tmp_path / "again", size=64, keep_empty=0.25, seed=0, progress=False)
    assert {r["tile_id"] for r in _rows(tmp_path / "again") if r["empty"] == "1"} == kept[(0, 0.25)]
    assert again["n_tiles"] == len(labelled) + round(0.25 * n_empty)


def test_tiled_tiff_pyramid_and_levels(tmp_path):
    rng = np.random.default_rng(2)
    img, mask = _pair(rng, 700, 900, blobs=6)
    slide = tmp_path / "slide.tif"
    with tifffile.TiffWriter(slide, bigtiff=True) as tw:
        tw.write(img, tile=(128, 128), compression="zlib", photometric="rgb", subifds=1)
        tw.write(img[::2, ::2], tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=1)
    tifffile.imwrite(tmp_path / "slide_mask.tif", mask * 120, tile=(128, 128), compression="zlib")
    with open_source(slide) as r:
        assert r.kind == "tiff" and r.shape == (700, 900) and r.levels == 2
        assert np.array_equal(r.read(100, 50, 60, 70), img[100:160, 50:120])
    out = tmp_path / "t0"
    s = tile_dataset(slide, out, size=256, stride=200, keep_empty=1.0, progress=False)
    rec, rmask, covered = _reassemble(out, (700, 900))
    assert covered.all() and np.array_equal(rec, img)
    assert np.array_equal(rmask, mask)  # 0/120/240 stored -> class indices 0/1/2
    assert s["classes"] == ["background", "class_1", "class_2"]
    # level 1: image from the pyramid, mask sampled from level 0
    out1 = tmp_path / "t1"
    tile_dataset(slide, out1, size=128, keep_empty=1.0, level=1, progress=False)
    rows = _rows(out1)
    assert rows[0]["level"] == "1" and rows[0]["downsample_y"] == "2" and "_L1_" in rows[0]["tile_id"]
    rec1, rmask1, covered1 = _reassemble(out1, (350, 450))
    assert covered1.all() and np.array_equal(rec1, img[::2, ::2])
    assert np.array_equal(rmask1, mask[::2, ::2])
    with pytest.raises(UserError, match="has no level 2"):
        tile_dataset(slide, tmp_path / "t2", size=128, level=2, progress=False)


def test_memory_limits_give_clear_errors(tmp_path):
    img = np.zeros((300, 400), np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "a_mask.png")
    with pytest.raises(UserError, match="decoded whole.*tiled TIFF"):
        tile_dataset(tmp_path / "a.png", tmp_path / "o1", size=64, max_decode_pixels=100_000, progress=False)
    tifffile.imwrite(tmp_path / "b.tif", img, compression="zlib", rowsperstrip=300)
    tifffile.imwrite(tmp_path / "b_mask.tif", img, compression="zlib", rowsperstrip=300)
    with pytest.raises(UserError, match="strips of .* megapixels"):
        tile_dataset(tmp_path / "b.tif", tmp_path / "o2", size=64, max_decode_pixels=100_000, progress=False)
    # an uncompressed one-strip TIFF is memory-mapped instead
    tifffile.imwrite(tmp_path / "c.tif", np.arange(120000, dtype=np.uint32).reshape(300, 400).astype(np.uint8))
    with open_source(tmp_path / "c.tif", max_decode_pixels=1000) as r:
        assert np.array_equal(r.read(10, 20, 5, 6)[:, :, 0], tifffile.imread(tmp_path / "c.tif")[10:15, 20:26])


def test_tissue_threshold_drops_blank_background(tmp_path):
    h, w = 256, 512
    img = np.full((h, w, 3), 240, np.uint8)  # bright glass
    img[:, 256:] = (180, 90, 160)  # stained tissue on the right half
    mask = np.zeros((h, w), np.uint8)
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "s_mask.png")
    s = tile_dataset(tmp_path / "s.png", tmp_path / "o", size=128, keep_empty=1.0, tissue_threshold=0.5, progress=False)
    assert s["n_blank_dropped"] == 4 and s["n_tiles"] == 4
    assert {int(r["x"]) for r in _rows(tmp_path / "o")} == {256, 384}
    assert tissue_fraction(img[:, :256]) == 0.0 and tissue_fraction(img[:, 256:]) == 1.0


def test_rgb_palette_masks_become_indices(tmp_path):
    rng = np.random.default_rng(4)
    img, idx = _pair(rng, 200, 200, blobs=4)
    colours = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0)], np.uint8)
    Image.fromarray(img).save(tmp_path / "p.png")
    Image.fromarray(colours[idx]).save(tmp_path / "p_mask.png")
    out = tmp_path / "o"
    tile_dataset(tmp_path / "p.png", out, size=100, keep_empty=1.0, progress=False)
    _, rmask, _ = _reassemble(out, (200, 200))
    pal = json.loads((out / "dataset.json").read_text())["tiling"]["source_palette"]["values"]
    expected = np.zeros_like(idx)
    for c, colour in enumerate(colours):
        expected[idx == c] = pal.index(list(colour))
    assert np.array_equal(rmask, expected)


def test_overwrite_never_deletes_the_source(tmp_path):
    """`tile SRC --out SRC --overwrite` must refuse before removing anything."""
    import numpy as np
    import pytest
    from PIL import Image

    from biomedseg.core.errors import UserError
    from biomedseg.data.tiling.dataset import tile_dataset

    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(np.ones((64, 64), np.uint8)).save(data / "masks" / "a.png")
    with pytest.raises(UserError):
        tile_dataset(data, data, size=32, overwrite=True)
    assert (data / "images" / "a.png").is_file() and (data / "masks" / "a.png").is_file()
