"""predict's outputs that other tools open: masks in the user's encoding (--mask-format) and
GeoJSON polygons (--geojson), in memory and streamed band by band."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi

from biomedseg.core.errors import UserError
from biomedseg.io import Palette, read_mask, read_raw
from biomedseg.io.mask_encoding import encode_mask, resolve_encoding, write_mask
from biomedseg.vector.geojson import write_mask_geojson
from biomedseg.vector.polygons import PolygonTracer, mask_polygons
from conftest import TINY

shapely = pytest.importorskip("shapely")

COLOURS = Palette([(0, 0, 0), (220, 40, 40), (40, 200, 90)])  # background, cell, filament


# ---------------------------------------------------------------- helpers


def rasterise(geojson_path, shape, names: dict[str, int]) -> np.ndarray:
    """Class-index mask of a GeoJSON file: a pixel takes the class of the polygon holding its
    centre (holes included); every polygon must be valid and none may overlap another."""
    doc = json.loads(geojson_path.read_text())
    assert doc["type"] == "FeatureCollection"
    out = np.zeros(shape, np.uint8)
    for f in doc["features"]:
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        x0, y0, x1, y1 = (int(np.floor(v)) for v in geom.bounds)  # test the pixels of its bounding box
        yy, xx = np.mgrid[max(y0, 0) : min(y1 + 1, shape[0]), max(x0, 0) : min(x1 + 1, shape[1])]
        inside = shapely.contains_xy(geom, xx + 0.5, yy + 0.5)
        assert not out[yy[inside], xx[inside]].any(), "overlapping polygons"
        out[yy[inside], xx[inside]] = names[f["properties"]["classification"]["name"]]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    fg_a, fg_b = a > 0, b > 0
    return 2 * np.sum(fg_a & fg_b & (a == b)) / max(1, fg_a.sum() + fg_b.sum())


def components(mask: np.ndarray, classes) -> int:
    """4-connected regions of the classes (what the GeoJSON holds one polygon of)."""
    return sum(ndi.label(mask == c)[1] for c in classes)


# ---------------------------------------------------------------- encodings (pure functions)


@pytest.mark.parametrize("fmt", ["index", "binary", "palette", "rgb", "auto"])
@pytest.mark.parametrize("palette", [Palette([(0,), (255,)]), Palette([(0, 0, 0), (0, 0, 255)])])
def test_every_encoding_reads_back_to_the_classes(fmt, palette, tmp_path):
    mask = np.random.default_rng(0).integers(0, 2, (40, 60)).astype(np.uint8)
    enc = resolve_encoding(fmt, palette, 0, [(0, 0, 0), (255, 215, 0)])
    for ext in (".png", ".tif"):
        write_mask(tmp_path / f"m{ext}", mask, enc)
        back, snapped = read_mask(tmp_path / f"m{ext}", enc.read_palette())
        assert np.array_equal(back, mask) and snapped == 0
    raw = read_raw(tmp_path / "m.png")
    expected = {
        "index": mask,
        "binary": mask * 255,
        "palette": mask,
        "rgb": np.array(enc.colors, np.uint8)[mask],
        "auto": np.array(palette.values, np.uint8)[mask].squeeze(-1)
        if palette.channels == 1
        else np.array(palette.values, np.uint8)[mask],
    }[fmt]
    assert np.array_equal(raw, expected)


def test_palette_png_holds_indices_and_the_class_colours(tmp_path):
    mask = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    image = encode_mask(mask, COLOURS, "palette")
    assert image.mode == "P" and np.array_equal(np.asarray(image), mask)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.array(COLOURS.values, np.uint8)[mask])
    enc = resolve_encoding("palette", COLOURS, 0, [(0, 0, 0)] * 3)
    write_mask(tmp_path / "m.png", mask, enc)
    write_mask(tmp_path / "m.tif", mask, enc)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and im.getpalette()[:9] == [v for c in COLOURS.values for v in c]
    with tifffile.TiffFile(tmp_path / "m.tif") as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        assert tf.pages[0].colormap[:, 1].tolist() == [220 * 257, 40 * 257, 40 * 257]


def test_auto_is_the_training_encoding_and_binary_needs_two_classes():
    colors = [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    assert resolve_encoding("auto", Palette.identity(3), 0, colors).kind == "index"
    assert resolve_encoding("auto", COLOURS, 0, colors).kind == "rgb"
    levels = resolve_encoding("auto", Palette([(0,), (128,), (255,)]), 0, colors)
    assert levels.kind == "levels" and levels.encode(np.array([[2, 1, 0]])).tolist() == [[255, 128, 0]]
    deep = resolve_encoding("auto", Palette([(0,), (65535,)]), 0, colors[:2])
    assert deep.values.dtype == np.uint16 and not deep.one_channel and deep.with_one_channel().kind == "index"
    # the background need not be class 0
    assert resolve_encoding("binary", Palette.identity(2), 1, colors[:2]).values.tolist() == [255, 0]
    with pytest.raises(UserError, match="binary: the run has 3 classes"):
        resolve_encoding("binary", Palette.identity(3), 0, colors)
    with pytest.raises(UserError, match="--mask-format gif"):
        resolve_encoding("gif", Palette.identity(3), 0, colors)


# ---------------------------------------------------------------- polygons


def test_polygons_rebuild_random_masks_exactly_whole_or_in_bands(tmp_path):
    """Noise (many corner-only contacts) and blobs with holes: valid polygons, one per 4-connected
    region, that rasterise back to the mask; tracing in bands of 1-4 rows gives the same."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        k = 3
        mask = rng.integers(0, k, (h, w)).astype(np.uint8)
        if trial % 2:
            mask = (ndi.gaussian_filter(rng.random((h, w)), 1.5) > 0.5).astype(np.uint8)
            mask[ndi.gaussian_filter(rng.random((h, w)), 1.0) > 0.55] = 2
        names = {"c1": 1, "c2": 2}
        write_mask_geojson(tmp_path / "m.geojson", mask, {1: ("c1", (1, 1, 1)), 2: ("c2", (2, 2, 2))})
        assert np.array_equal(rasterise(tmp_path / "m.geojson", mask.shape, names), mask)
        n = components(mask, (1, 2))
        assert len(mask_polygons(mask, (1, 2))) == n
        banded = []
        tracer = PolygonTracer(w, (1, 2), lambda c, s, hs, out=banded: out.append((c, s, hs)))
        y = 0
        while y < h:
            step = int(rng.integers(1, 5))
            tracer.add_rows(y, mask[y : y + step])
            y = min(h, y + step)
        tracer.finish()
        assert len(banded) == n
        assert sorted((c, s.tolist(), [x.tolist() for x in hs]) for c, s, hs in banded) == sorted(
            (c, s.tolist(), [x.tolist() for x in hs]) for c, s, hs in mask_polygons(mask, (1, 2))
        )


def test_holes_and_islands_are_kept():
    mask = np.zeros((12, 12), np.uint8)
    mask[1:11, 1:11] = 1
    mask[3:9, 3:9] = 0  # a hole ...
    mask[5:7, 5:7] = 1  # ... with an island in it
    polys = mask_polygons(mask, [1])
    assert len(polys) == 2
    (_, ring, holes), (_, island, island_holes) = sorted(polys, key=lambda p: -len(p[2]))
    geom = shapely.Polygon(ring, holes)
    assert len(holes) == 1 and geom.area == 100 - 36 and island_holes == []
    assert shapely.Polygon(island).area == 4
    assert shapely.Polygon(ring).exterior.is_ccw  # RFC 7946: exterior counter-clockwise, holes clockwise
    assert not shapely.LinearRing(holes[0]).is_ccw


# ---------------------------------------------------------------- predict end to end


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A tiny run trained on synthetic data whose masks are RGB colours (``COLOURS``)."""
    from biomedseg.data.synthetic import make_synthetic_dataset
    from biomedseg.training.api import train

    root = tmp_path_factory.mktemp("colour")
    data = make_synthetic_dataset(root / "data", n_train=8, n_test=3, size=(64, 96), seed=3)
    lut = np.array(COLOURS.values, np.uint8)
    for path in (data / "masks").glob("*.png"):
        Image.fromarray(lut[np.asarray(Image.open(path))]).save(path)
    run = train(data, root / "run", epochs=1, seed=0, quiet=True, **TINY)
    return run, data


def test_masks_in_the_training_masks_colours_and_geojson(colour_run, tmp_path):
    from biomedseg.inference.predict.batch import predict
    from biomedseg.inference.run import load_run

    run, data = colour_run
    loaded = load_run(run, device="cpu")
    assert Palette.from_json(loaded.info.palette) == COLOURS  # the run learnt the colours
    images = tmp_path / "images"  # the test split
    images.mkdir()
    for sample in json.loads((data / "dataset.json").read_text())["split"]["test"]:
        (images / f"{sample}.png").write_bytes((data / "images" / f"{sample}.png").read_bytes())
    outs = {}
    for fmt in ("index", "rgb", "palette", "auto"):
        outs[fmt] = tmp_path / fmt
        predict(loaded, [images], outs[fmt], mask_format=fmt, overlays=False, quiet=True, geojson=fmt == "index")
    names = {n: i for i, n in enumerate(loaded.classes)}
    predicted = set()
    for path in sorted(images.glob("*.png")):
        index = read_raw(outs["index"] / path.name)
        predicted |= set(np.unique(index).tolist())
        rgb = read_raw(outs["rgb"] / path.name)
        training_colours = {tuple(c) for c in read_raw(data / "masks" / path.name).reshape(-1, 3).tolist()}
        assert rgb.shape == index.shape + (3,) and {tuple(c) for c in rgb.reshape(-1, 3).tolist()} <= training_colours
        assert np.array_equal(read_mask(outs["rgb"] / path.name, COLOURS)[0], index)
        assert np.array_equal(read_raw(outs["auto"] / path.name), rgb)
        with Image.open(outs["palette"] / path.name) as im:
            assert im.mode == "P" and np.array_equal(np.asarray(im), index)
            assert np.array_equal(np.asarray(im.convert("RGB")), rgb)
        # GeoJSON: QuPath properties, the class colours, the mask back when rasterised
        doc = json.loads((outs["index"] / f"{path.stem}.geojson").read_text())
        for f in doc["features"]:
            props = f["properties"]
            assert props["objectType"] == "annotation"
            assert tuple(props["classification"]["color"]) == COLOURS.values[names[props["classification"]["name"]]]
        back = rasterise(outs["index"] / f"{path.stem}.geojson", index.shape, names)
        assert dice(back, index) >= 0.99 and np.array_equal(back, index)
        assert len(doc["features"]) == components(index, (1, 2))
    assert predicted >= {0, 1}  # the check covers a foreground class


def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    fg = ndi.gaussian_filter(rng.random(shape), 4) > 0.5
    fg[20:170, 30:60] = True  # a tall object crossing many 32-row bands
    fg[60:120, 40:50] = False  # with a hole
    return np.where(fg, 200, 0).astype(np.uint8)


def test_streamed_geojson_and_binary_mask(threshold_run, tmp_path):
    """Bands of 32 rows: objects cut by band boundaries are one polygon each, in full-resolution
    pixels, and the binary mask is 0/255 strip by strip."""
    from biomedseg.inference.predict.batch import predict

    image = _blobs((230, 170), 1)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(64, 64))
    out = tmp_path / "out"
    s = predict(
        threshold_run, [tmp_path / "big.tif"], out, stream=True, quiet=True, geojson="detection", mask_format="binary"
    )
    assert s.streamed and (out / "big.geojson").is_file()
    mask = tifffile.imread(out / "big.tif")
    assert set(np.unique(mask).tolist()) == {0, 255} and np.array_equal(mask, np.where(image > 100, 255, 0))
    index = (mask == 255).astype(np.uint8)
    back = rasterise(out / "big.geojson", index.shape, {"cell": 1})
    assert dice(back, index) >= 0.99 and np.array_equal(back, index)
    doc = json.loads((out / "big.geojson").read_text())
    assert len(doc["features"]) == components(index, [1])  # no object split in two
    assert {f["properties"]["objectType"] for f in doc["features"]} == {"detection"}

    def height(f):
        ys = [p[1] for p in f["geometry"]["coordinates"][0]]
        return max(ys) - min(ys)

    tall = max(doc["features"], key=height)
    assert height(tall) >= 150 and len(tall["geometry"]["coordinates"]) > 1  # spans 5 bands, hole kept
    # rgb cannot be written strip by strip: class indices, with a warning
    predict(threshold_run, [tmp_path / "big.tif"], tmp_path / "rgb", stream=True, quiet=True, mask_format="rgb")
    assert np.array_equal(tifffile.imread(tmp_path / "rgb" / "big.tif"), index)


def test_streamed_pyramid_level_geojson_is_in_full_resolution_pixels(threshold_run, tmp_path):
    from biomedseg.inference.predict.batch import predict

    image = _blobs((240, 180), 2)
    with tifffile.TiffWriter(tmp_path / "pyr.tif") as tw:
        tw.write(image, tile=(64, 64), subifds=1, metadata=None)
        tw.write(image[::2, ::2], tile=(64, 64), subfiletype=1, metadata=None)
    predict(threshold_run, [tmp_path / "pyr.tif"], tmp_path / "out", level=1, quiet=True, geojson=True)
    level1 = tifffile.imread(tmp_path / "out" / "pyr.tif")
    assert level1.shape == (120, 90)
    full = rasterise(tmp_path / "out" / "pyr.geojson", (240, 180), {"cell": 1})
    assert np.array_equal(full, np.kron(level1, np.ones((2, 2), np.uint8)))


def test_binary_mask_of_a_run_trained_on_0_255_masks(threshold_run, tmp_path):
    """auto on a run whose masks were 0/255 writes 0/255 (as binary does); RLE reads them back."""
    from biomedseg.inference.predict.batch import predict
    from biomedseg.runs import open_run

    info = open_run(threshold_run).paths.dataset
    meta = json.loads(info.read_text())
    meta["palette"] = {"values": [[0], [255]]}
    info.write_text(json.dumps(meta))
    image = _blobs((80, 90), 3)
    Image.fromarray(image).save(tmp_path / "a.png")
    for fmt in ("auto", "binary"):
        predict(
            threshold_run,
            [tmp_path / "a.png"],
            tmp_path / fmt,
            mask_format=fmt,
            quiet=True,
            rle=tmp_path / f"{fmt}.csv",
        )
        assert np.array_equal(read_raw(tmp_path / fmt / "a.png"), np.where(image > 100, 255, 0))
    predict(threshold_run, [tmp_path / "a.png"], tmp_path / "index", quiet=True, rle=tmp_path / "index.csv")
    # a resumed run reads the 0/255 mask back for the RLE file: the same rows as class indices
    predict(
        threshold_run,
        [tmp_path / "a.png"],
        tmp_path / "binary",
        mask_format="binary",
        quiet=True,
        rle=tmp_path / "again.csv",
    )
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "index.csv").read_text()
    assert (tmp_path / "binary.csv").read_text() == (tmp_path / "index.csv").read_text()


def test_cli_predict_mask_format_and_geojson(threshold_run, tmp_path):
    from typer.testing import CliRunner

    from biomedseg.cli import app

    Image.fromarray(_blobs((70, 80), 4)).save(tmp_path / "a.png")
    r = CliRunner().invoke(
        app,
        [
            "predict",
            str(threshold_run),
            str(tmp_path / "a.png"),
            "--out",
            str(tmp_path / "out"),
            "--mask-format",
            "rgb",
            "--geojson",
            "--no-overlays",
        ],
    )
    assert r.exit_code == 0, r.output
    assert read_raw(tmp_path / "out" / "a.png").shape == (70, 80, 3)
    assert json.loads((tmp_path / "out" / "a.geojson").read_text())["features"]
    r = CliRunner().invoke(
        app,
        [
            "predict",
            str(threshold_run),
            str(tmp_path / "a.png"),
            "--out",
            str(tmp_path / "o2"),
            "--mask-format",
            "jpeg",
        ],
    )
    assert isinstance(r.exception, UserError) and "--mask-format jpeg: choose one of" in str(r.exception)
    assert not (tmp_path / "o2" / "a.png").exists()  # refused before anything is written


def test_level_0_of_a_compressed_pyramid_tiff_streams(threshold_run, tmp_path):
    """Regression: level 0 of a tiled, compressed pyramid TIFF opened tifffile's multiscale group
    (no ``shape``) instead of the level's array."""
    from biomedseg.inference.predict.batch import predict

    image = _blobs((240, 180), 5)
    with tifffile.TiffWriter(tmp_path / "pyr.tif") as tw:
        tw.write(image, tile=(64, 64), subifds=1, metadata=None, compression="zlib")
        tw.write(image[::2, ::2], tile=(64, 64), subfiletype=1, metadata=None, compression="zlib")
    predict(threshold_run, [tmp_path / "pyr.tif"], tmp_path / "out", stream=True, quiet=True)
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "pyr.tif"), (image > 100).astype(np.uint8))


def test_distributed_rle_reads_the_written_encoding_back(threshold_run, tmp_path):
    """Workers write masks; the client's RLE file reads them back in their --mask-format."""
    from biomedseg.inference.predict.batch import predict
    from biomedseg.inference.predict.distributed import _write_rle_from_outputs
    from biomedseg.inference.predict.options import PredictOptions

    Image.fromarray(_blobs((60, 70), 6)).save(tmp_path / "a.png")
    predict(threshold_run, [tmp_path / "a.png"], tmp_path / "idx", quiet=True, rle=tmp_path / "index.csv")
    predict(threshold_run, [tmp_path / "a.png"], tmp_path / "rgb", quiet=True, mask_format="rgb")
    rle = _write_rle_from_outputs(
        PredictOptions(rle=tmp_path / "rgb.csv", mask_format="rgb"),
        str(threshold_run),
        [tmp_path / "a.png"],
        tmp_path / "rgb",
    )
    assert rle.read_text() == (tmp_path / "index.csv").read_text()
