"""Physical pixel size (read from files and dataset.json, audited, fingerprinted), OME-TIFF and
OME-Zarr outputs (pixel size copied, sub-resolution pyramids) and zarr inputs for audit, tile
and train."""

import json

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from biomedseg.core.errors import UserError
from biomedseg.io.ome import ngff_multiscales, pyramid_shapes, write_ome_tiff
from biomedseg.io.pixel_size import pixel_size, pixel_size_from_meta, summarize_pixel_sizes
from conftest import TINY, write_fake_run


def ome_physical_size(path) -> tuple[float, float]:
    """``(PhysicalSizeY, PhysicalSizeX)`` in µm from the OME-XML of ``path`` (tifffile's parser)."""
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome
        pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
    assert pixels["PhysicalSizeXUnit"] == pixels["PhysicalSizeYUnit"] == "µm"
    return float(pixels["PhysicalSizeY"]), float(pixels["PhysicalSizeX"])


def write_zarr_image(path, array, axes="yx", pixel_size_um=None, chunks=32):
    """A one-level OME-Zarr (NGFF 0.4, zarr format 2) holding ``array``."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.create_array("0", shape=array.shape, chunks=(1,) * (array.ndim - 2) + (chunks, chunks), dtype=array.dtype)[:] = (
        array
    )
    g.attrs["multiscales"] = ngff_multiscales(path.stem, axes, 1, pixel_size_um)
    return path


# ----------------------------------------------------------------------------- reading the pixel size
def test_pixel_size_from_ome_xml_resolution_tags_and_imagej(tmp_path):
    img = np.zeros((20, 30), np.uint8)
    tifffile.imwrite(
        tmp_path / "ome.tif",
        img,
        ome=True,
        metadata={"axes": "YX", "PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.25},
    )
    tifffile.imwrite(tmp_path / "cm.tif", img, resolution=(1e4 / 0.5, 1e4 / 0.25), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(1 / 0.5, 1 / 0.25), metadata={"unit": "micron"})
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72, 72), resolutionunit="INCH")  # a print setting
    tifffile.imwrite(tmp_path / "plain.tif", img)
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert pixel_size(tmp_path / "ome.tif") == (0.25, 0.5)
    assert pixel_size(tmp_path / "cm.tif") == (0.25, 0.5)
    assert pixel_size(tmp_path / "ij.tif") == (0.25, 0.5)
    for name in ("dpi.tif", "plain.tif", "x.png", "missing.tif"):
        assert pixel_size(tmp_path / name) is None, name


def test_pixel_size_of_a_pyramid_level_and_an_ome_zarr(tmp_path):
    m = np.zeros((300, 200), np.uint8)
    write_ome_tiff(tmp_path / "pyr.tif", m, pixel_size=(0.25, 0.5), pyramid_above=1000)
    assert pixel_size(tmp_path / "pyr.tif", level=1) == (0.5, 1.0)
    z = write_zarr_image(tmp_path / "img.zarr", m, pixel_size_um=(0.3, 0.4))
    assert pixel_size(z) == (0.3, 0.4)
    assert pixel_size(write_zarr_image(tmp_path / "nounit.zarr", m)) is None  # unit scale, no unit


def test_pixel_size_from_dataset_json():
    meta = {"pixel_size": {"default": 0.5, "a": [0.25, 0.3], "b.tif": 2}}
    assert pixel_size_from_meta(meta, "a", "a.tif") == (0.25, 0.3)
    assert pixel_size_from_meta(meta, "b", "b.tif") == (2.0, 2.0)
    assert pixel_size_from_meta(meta, "c", "c.tif") == (0.5, 0.5)
    assert pixel_size_from_meta({"pixel_size": 0.65}, "x") == (0.65, 0.65)
    assert pixel_size_from_meta({"pixel_size": {"a": 1}}, "z") is None
    assert pixel_size_from_meta({}, "x") is None
    for bad in ("0.5", -1, [1, 2, 3], [0, 1], True):
        with pytest.raises(UserError, match="pixel_size"):
            pixel_size_from_meta({"pixel_size": bad}, "x")
    s = summarize_pixel_sizes([(0.5, 0.5), (0.5, 0.5), (0.502, 0.502), None])
    assert s["known"] == 3 and s["unknown"] == 1 and not s["mixed"] and s["median"] == [0.5, 0.5]
    assert summarize_pixel_sizes([(0.5, 0.5), (0.25, 0.25)])["mixed"]


# ----------------------------------------------------------------------------- OME-TIFF / OME-Zarr outputs
def test_ome_tiff_keeps_pixel_size_and_has_a_pyramid(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (600, 450), dtype=np.uint8)
    write_ome_tiff(tmp_path / "m.tif", mask, pixel_size=(0.25, 0.5), pyramid_above=100_000)
    assert ome_physical_size(tmp_path / "m.tif") == (0.25, 0.5)
    with tifffile.TiffFile(tmp_path / "m.tif") as tf:
        levels = tf.series[0].levels
        assert len(levels) > 1 and len(tf.series) == 1
        assert [lv.shape for lv in levels[:2]] == [(600, 450), (300, 225)]
        assert tf.pages[0].is_tiled
        assert np.array_equal(levels[0].asarray(), mask)
        assert np.array_equal(levels[1].asarray(), mask[::2, ::2])  # nearest: class indices stay classes
        assert max(levels[-1].shape) <= 512
    # small outputs: one level; no pixel size stated when the input had none
    write_ome_tiff(tmp_path / "s.tif", mask[:40, :30])
    with tifffile.TiffFile(tmp_path / "s.tif") as tf:
        assert tf.is_ome and len(tf.series[0].levels) == 1
        assert "PhysicalSizeX" not in tf.ome_metadata
    assert pyramid_shapes((600, 450)) == [(600, 450)]  # below the default threshold


def _fake_run(tmp_path):
    import torch

    from biomedseg.models import create_model

    torch.manual_seed(0)
    kw = {"depth": 3, "base_channels": 8, "num_res_units": 1}
    model = create_model("unet", 1, 2, **kw)
    return write_fake_run(
        tmp_path / "run",
        "unet",
        model.state_dict(),
        None,
        [],
        patch_size=64,
        batch_size=4,
        model_kwargs=kw,
        n_classes=2,
        overlap=0.25,
    )


def test_streamed_outputs_have_pyramids_and_the_pixel_size(tmp_path):
    import torch

    from biomedseg.models import create_model
    from biomedseg.stream.predictor import StreamingPredictor
    from biomedseg.transforms.normalize import Normalizer

    torch.manual_seed(0)
    model = create_model("unet", 1, 3, depth=3, base_channels=8, num_res_units=1).eval()
    img = np.random.default_rng(1).integers(0, 255, (330, 270), dtype=np.uint8)
    sp = StreamingPredictor(model, 128, 0.25, normalizer=Normalizer([100.0], [50.0]), channels=1, out_tile=64)
    out = tmp_path / "out"
    sp.predict_to_files(img, out / "m.tif", out / "p.tif", pixel_size=(0.4, 0.4), pyramid_above=10_000)
    assert sorted(p.name for p in out.iterdir()) == ["m.tif", "p.tif"]  # temporaries removed
    assert ome_physical_size(out / "m.tif") == (0.4, 0.4)
    with tifffile.TiffFile(out / "m.tif") as tf:
        levels = tf.series[0].levels
        mask = levels[0].asarray()
        assert [lv.shape for lv in levels] == [(330, 270), (165, 135)]
        assert np.array_equal(levels[1].asarray(), mask[::2, ::2])
    with tifffile.TiffFile(out / "p.tif") as tf:  # float16: plain TIFF, same pyramid
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == [(3, 330, 270), (3, 165, 135)]
        assert np.array_equal(levels[1].asarray(), levels[0].asarray()[:, ::2, ::2])
    assert pixel_size(out / "p.tif") == (0.4, 0.4)  # resolution tags
    # OME-Zarr: multiscale, NGFF scale from the pixel size, levels read back
    sp.predict_to_files(img, out / "m.zarr", out / "p.zarr", fmt="zarr", pixel_size=(0.4, 0.4), pyramid_above=10_000)
    g = zarr.open_group(str(out / "m.zarr"), mode="r")
    ms = g.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [d["path"] for d in ms["datasets"]] == ["0", "1"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[0.4, 0.4], [0.8, 0.8]]
    assert [a.get("unit") for a in ms["axes"]] == ["micrometer", "micrometer"]
    assert np.array_equal(g["0"][:], mask)
    assert np.array_equal(g["1"][:], mask[::2, ::2])
    assert zarr.open_group(str(out / "p.zarr"), mode="r")["1"].shape == (3, 165, 135)
    assert pixel_size(out / "m.zarr", level=1) == (0.8, 0.8)


def test_predict_copies_the_input_pixel_size(tmp_path, monkeypatch):
    from biomedseg.inference.predict.batch import predict
    from biomedseg.io import ome

    run = _fake_run(tmp_path)
    src = tmp_path / "in"
    src.mkdir()
    img = np.random.default_rng(2).integers(0, 255, (200, 160), dtype=np.uint8)
    tifffile.imwrite(src / "a.tif", img, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    monkeypatch.setattr(ome, "PYRAMID_ABOVE_PIXELS", 10_000)
    s = predict(
        run, src, tmp_path / "tif", output_format="tiff", overlays=False, probabilities=True, quiet=True, device="cpu"
    )
    assert not s.failed
    assert ome_physical_size(tmp_path / "tif" / "a.tif") == (0.5, 0.5)
    with tifffile.TiffFile(tmp_path / "tif" / "a.tif") as tf:
        assert len(tf.series[0].levels) > 1
    assert pixel_size(tmp_path / "tif" / "a_proba.tif") == (0.5, 0.5)
    predict(run, src, tmp_path / "z", output_format="zarr", overlays=False, quiet=True, device="cpu")
    assert pixel_size(tmp_path / "z" / "a.zarr") == (0.5, 0.5)
    assert len(zarr.open_group(str(tmp_path / "z" / "a.zarr"), mode="r").attrs["multiscales"][0]["datasets"]) > 1
    # streamed (tiled TIFF input read band by band): the same metadata
    predict(run, src, tmp_path / "st", stream=True, overlays=False, quiet=True, device="cpu")
    assert ome_physical_size(tmp_path / "st" / "a.tif") == (0.5, 0.5)


# ----------------------------------------------------------------------------- audit
def _tiff_dataset(root, sizes: list[tuple[float, float] | None]):
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, px in enumerate(sizes):
        img = rng.integers(0, 255, (48, 48), dtype=np.uint8)
        kw = {} if px is None else {"resolution": (1e4 / px[1], 1e4 / px[0]), "resolutionunit": "CENTIMETER"}
        tifffile.imwrite(root / "images" / f"im{i}.tif", img, **kw)
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 10:30] = 255
        tifffile.imwrite(root / "masks" / f"im{i}.tif", mask)
    return root


def test_audit_reports_pixel_sizes_and_flags_mixed_ones(tmp_path):
    from biomedseg.audit.run import format_audit_summary, run_audit

    data = _tiff_dataset(tmp_path / "d", [(0.5, 0.5), (0.5, 0.5), (0.25, 0.25), None])
    audit = run_audit(data, progress=False)
    px = audit["inventory"]["pixel_size"]
    assert px["known"] == 3 and px["unknown"] == 1 and px["mixed"]
    assert px["values"] == [{"pixel_size": [0.5, 0.5], "count": 2}, {"pixel_size": [0.25, 0.25], "count": 1}]
    assert px["per_image"]["im2"] == [0.25, 0.25] and "im3" not in px["per_image"]
    codes = {f["code"]: f for f in audit["findings"]}
    assert codes["mixed_pixel_sizes"]["items"] == ["im2"]
    assert "pixel_size_unknown" in codes
    assert audit["fingerprint"]["pixel_size"] == [0.5, 0.5]
    assert "pixel size: 0.5 x 0.5 µm (2 images)" in format_audit_summary(audit)
    # dataset.json states one size for all: it wins, nothing is mixed
    (data / "dataset.json").write_text(json.dumps({"pixel_size": 0.65}))
    audit = run_audit(data, progress=False)
    px = audit["inventory"]["pixel_size"]
    assert px["values"] == [{"pixel_size": [0.65, 0.65], "count": 4}] and not px["mixed"]
    assert px["sources"] == {"dataset.json": 4}
    assert "mixed_pixel_sizes" not in {f["code"] for f in audit["findings"]}


# ----------------------------------------------------------------------------- zarr inputs
def _zarr_dataset(root, n=4, size=64):
    rng = np.random.default_rng(4)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 120, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[8 + i : 40 + i, 12:44] = 1
        img[mask == 1] += 120
        write_zarr_image(root / "images" / f"z{i}.zarr", img, pixel_size_um=(0.5, 0.5))
        write_zarr_image(root / "masks" / f"z{i}.zarr", mask)
    return root


@pytest.mark.slow
def test_zarr_images_and_masks_are_audited_tiled_and_trained_on(tmp_path):
    from biomedseg.audit.run import run_audit
    from biomedseg.data.tiling.dataset import tile_dataset
    from biomedseg.runs import open_run
    from biomedseg.training.api import train

    data = _zarr_dataset(tmp_path / "zd")
    audit = run_audit(data, progress=False)
    inv = audit["inventory"]
    assert inv["n_pairs"] == 4 and not inv["unreadable"] and inv["formats"] == {".zarr": 4}
    assert inv["sizes"] == [{"width": 64, "height": 64, "count": 4}]
    assert inv["pixel_size"]["values"] == [{"pixel_size": [0.5, 0.5], "count": 4}]
    assert audit["masks"]["classes"] and audit["masks"]["class_pixel_fraction"]

    tiles = tmp_path / "tiles"
    summary = tile_dataset(data, tiles, size=32, keep_empty=1.0, progress=False)
    assert summary["n_tiles"] == 16 and len(list((tiles / "images").iterdir())) == 16
    assert json.loads((tiles / "dataset.json").read_text())["pixel_size"] == [0.5, 0.5]

    run = train(data, tmp_path / "run", epochs=1, seed=0, quiet=True, **TINY)
    plan = yaml.safe_load(open_run(run).paths.plan.read_text())
    assert plan["fingerprint"]["pixel_size"] == [0.5, 0.5]


def test_a_zarr_too_large_to_decode_is_a_one_line_error(tmp_path):
    from biomedseg.io import image_shape, read_image

    g = zarr.open_group(str(tmp_path / "huge.zarr"), mode="w", zarr_format=2)
    g.create_array("0", shape=(20_000, 20_000), chunks=(1024, 1024), dtype=np.uint8, fill_value=0)  # nothing stored
    assert image_shape(tmp_path / "huge.zarr") == (20_000, 20_000)
    with pytest.raises(UserError, match=r"huge\.zarr: is 20000x20000 \(400 megapixels\).*biomedseg tile") as err:
        read_image(tmp_path / "huge.zarr")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="stack"):
        read_image(write_zarr_image(tmp_path / "stack.zarr", np.zeros((7, 20, 20), np.uint8), axes="cyx"))
