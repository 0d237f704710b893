"""Streaming (band-by-band) prediction equals the in-memory sliding window; files, resume."""

import numpy as np
import pytest
import tifffile
import torch

from biomedseg.engine.sliding_window import (
    SlidingWindowPredictor,
    normalize_tta,
    pad_before_after,
    tile_starts,
    tta_transforms,
)
from biomedseg.stream.predictor import StreamingPredictor, open_source, partial_path
from biomedseg.transforms.normalize import Normalizer
from conftest import write_fake_run

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def model():
    from biomedseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", 1, 3, depth=3, base_channels=8, num_res_units=1).eval()


def make_run(run_dir, n_classes=2, patch=64):
    """A run folder with a random-weight 8-channel U-Net (what load_run needs)."""
    from biomedseg.models import create_model

    torch.manual_seed(0)
    kw = {"depth": 3, "base_channels": 8, "num_res_units": 1}
    model = create_model("unet", 1, n_classes, **kw)
    return write_fake_run(
        run_dir,
        "unet",
        model.state_dict(),
        None,
        [],
        patch_size=patch,
        batch_size=4,
        model_kwargs=kw,
        n_classes=n_classes,
        overlap=0.25,
    )


def test_grid_matches_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, tile, ov in [
        (512, 128, 0.25),
        (384, 128, 0.5),
        (1000, 256, 0.25),
        (128, 128, 0.25),
        (129, 128, 0.9),
        (300, 64, 0.0),
    ]:
        interval = _get_scan_interval((size,), (tile,), 1, (ov,))
        ref = sorted({s[0].start for s in dense_patch_slices((size,), (tile,), interval)})
        assert tile_starts(size, tile, ov) == ref
    assert pad_before_after(50, 128) == (39, 39) and pad_before_after(51, 128) == (38, 39)
    assert pad_before_after(200, 128) == (0, 0)


def test_tta_modes():
    assert normalize_tta(False) == "none" and normalize_tta(True) == "flips"
    assert normalize_tta("flips+rot90") == "flips+rot90" and len(tta_transforms("flips+rot90")) == 8
    assert len(tta_transforms("flips")) == 4 and len(tta_transforms(None)) == 1
    from biomedseg.core.errors import UserError

    with pytest.raises(UserError):
        normalize_tta("sideways")


@pytest.mark.parametrize("shape,tta", [((512, 384), False), ((200, 150), "flips+rot90"), ((50, 300), True)])
def test_streaming_equals_in_memory(model, shape, tta):
    x = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    ref = SlidingWindowPredictor(model, 128, 0.25, batch_size=4, tta=tta).predict_proba(x)
    got = StreamingPredictor(model, 128, 0.25, batch_size=3, tta=tta).predict_proba(x)
    assert got.shape == ref.shape == (3, *shape)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_streaming_equals_in_memory_at_a_working_scale(model):
    from biomedseg.engine.scaled import at_scale, native_tile

    scaled, tile = at_scale(model, 0.5), native_tile(64, 0.5)  # 64 px patches of 128 px native tiles
    x = np.random.default_rng(4).normal(size=(1, 300, 260)).astype(np.float32)
    ref = SlidingWindowPredictor(scaled, tile, 0.25, batch_size=4).predict_proba(x)
    got = StreamingPredictor(scaled, tile, 0.25, batch_size=3).predict_proba(x)
    assert got.shape == ref.shape == (3, 300, 260)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_rot90_tta_is_rotation_equivariant(model):
    x = np.random.default_rng(2).normal(size=(1, 128, 128)).astype(np.float32)
    sp = SlidingWindowPredictor(model, 128, 0.25, tta="flips+rot90")
    a = sp.predict_proba(x)
    b = sp.predict_proba(np.ascontiguousarray(np.rot90(x, 1, (1, 2))))
    np.testing.assert_allclose(np.rot90(a, 1, (1, 2)), b, atol=1e-5)


def test_optimized_inference_model_matches_stock_model(model):
    from biomedseg.engine.sliding_window import InstanceNormAsGroupNorm

    x = np.random.default_rng(8).normal(size=(1, 160, 200)).astype(np.float32)
    stock = SlidingWindowPredictor(model, 128, 0.25, optimize=False, channels_last=False).predict_proba(x)
    fast = SlidingWindowPredictor(model, 128, 0.25)
    np.testing.assert_allclose(fast.predict_proba(x), stock, atol=1e-4)
    assert any(isinstance(m, InstanceNormAsGroupNorm) for m in fast.model.modules())
    assert not any(isinstance(m, InstanceNormAsGroupNorm) for m in model.modules())  # original untouched


@pytest.mark.slow
def test_streaming_equals_in_memory_2048(model):
    x = np.random.default_rng(3).normal(size=(1, 2048, 2048)).astype(np.float32)
    ref = SlidingWindowPredictor(model, 256, 0.25, batch_size=4).predict_proba(x)
    got = StreamingPredictor(model, 256, 0.25, batch_size=4).predict_proba(x)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_tiled_tiff_in_tiled_tiff_out(model, tmp_path):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 255, (420, 330), dtype=np.uint8)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img, tile=(64, 64), compression="zlib")
    norm = Normalizer([100.0], [50.0])
    ref = SlidingWindowPredictor(model, 128, 0.25).predict_proba(norm(img[:, :, None]))
    sp = StreamingPredictor(model, 128, 0.25, normalizer=norm, channels=1)
    with open_source(src) as s:
        assert s.shape == (420, 330) and s.tile == (64, 64)
    res = sp.predict_to_files(src, tmp_path / "out" / "in.tif", tmp_path / "out" / "in_proba.tif", out_tile=64)
    assert res.n_tiles == len(tile_starts(420, 128, 0.25)) * len(tile_starts(330, 128, 0.25)) == 20
    with tifffile.TiffFile(tmp_path / "out" / "in.tif") as tf:
        page = tf.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (64, 64)
        mask = tf.asarray()
    assert mask.shape == img.shape and mask.dtype == np.uint8
    assert np.array_equal(mask, ref.argmax(0))
    proba = tifffile.imread(tmp_path / "out" / "in_proba.tif")
    assert proba.shape == (3, 420, 330) and proba.dtype == np.float16
    np.testing.assert_allclose(proba, ref, atol=1e-3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["in.tif", "in_proba.tif"]  # no leftovers
    # 256 x 256 output tiles (>= 32 KiB: tifffile's threaded-encoder size) are written intact too
    sp.predict_to_files(src, tmp_path / "out256" / "in.tif", out_tile=256)
    assert np.array_equal(tifffile.imread(tmp_path / "out256" / "in.tif"), ref.argmax(0))
    # a contiguous uncompressed TIFF is read by offsets and gives the same result
    tifffile.imwrite(tmp_path / "raw.tif", img, metadata=None)
    np.testing.assert_allclose(sp.predict_proba(tmp_path / "raw.tif"), ref, atol=1e-4)


def test_zarr_output_input_and_pyramid_level(model, tmp_path):
    import zarr

    rng = np.random.default_rng(5)
    img = rng.integers(0, 255, (260, 200), dtype=np.uint8)
    norm = Normalizer([100.0], [50.0])
    sp = StreamingPredictor(model, 128, 0.25, normalizer=norm, channels=1, out_tile=64)
    sp.predict_to_files(img, tmp_path / "m.zarr", tmp_path / "p.zarr", fmt="zarr")
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    assert g.attrs["multiscales"][0]["datasets"][0]["path"] == "0"
    ref = SlidingWindowPredictor(model, 128, 0.25).predict_proba(norm(img[:, :, None]))
    assert np.array_equal(g["0"][:], ref.argmax(0))
    assert zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["0"].shape == (3, 260, 200)
    # an OME-Zarr as input
    zimg = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    zimg.create_array("0", shape=img.shape, chunks=(64, 64), dtype=np.uint8)[:] = img
    zimg.attrs["multiscales"] = [
        {"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}
    ]
    np.testing.assert_allclose(sp.predict_proba(tmp_path / "img.zarr"), ref, atol=1e-4)
    # pyramid TIFF: level 1 is predicted at its own size
    with tifffile.TiffWriter(tmp_path / "pyr.tif") as tw:
        tw.write(img, tile=(64, 64), subifds=1, metadata=None)
        tw.write(img[::2, ::2], tile=(64, 64), subfiletype=1, metadata=None)
    assert sp.predict_proba(tmp_path / "pyr.tif", level=1).shape == (3, 130, 100)
    with pytest.raises(Exception, match="level 2"):
        sp.predict_proba(tmp_path / "pyr.tif", level=2)


def test_blank_tiles_are_skipped(model):
    x = np.zeros((1, 400, 300), np.float32)
    x[:, 300:] = np.random.default_rng(6).normal(size=(1, 100, 300))
    sp = StreamingPredictor(model, 128, 0.25, skip_blank_std=1e-3, blank_class=0)
    rows = []
    res = sp.run(x, lambda y0, p: rows.append((y0, p)))
    assert res.n_skipped > 0 and res.n_tiles + res.n_skipped == len(tile_starts(400, 128, 0.25)) * 3
    proba = np.concatenate([p.numpy() for _, p in rows], axis=1)
    assert proba.shape == (3, 400, 300)
    assert [y for y, _ in rows] == sorted(y for y, _ in rows)
    assert (proba[0, :150] > 0.99).all()  # covered by blank tiles only -> background


def test_interrupted_run_leaves_no_finished_file_and_resumes(tmp_path):
    from biomedseg.inference.predict.batch import predict
    from biomedseg.inference.predict.outputs import existing_mask

    run = make_run(tmp_path / "run")
    src = tmp_path / "in"
    src.mkdir()
    img = np.random.default_rng(7).integers(0, 255, (300, 260), dtype=np.uint8)
    tifffile.imwrite(src / "a.tif", img, tile=(64, 64))
    out = tmp_path / "out"
    out.mkdir()

    # an interruption inside the writer: nothing that looks finished is left behind
    calls = []

    def boom(p):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return p.argmax(0).astype(np.uint8)

    from biomedseg.inference.run import load_run

    loaded = load_run(run, device="cpu")
    sp = StreamingPredictor.from_run(loaded, decide=boom)
    with pytest.raises(KeyboardInterrupt):
        sp.predict_to_files(src / "a.tif", out / "a.tif")
    assert not (out / "a.tif").exists() and not partial_path(out / "a.tif").exists()
    # a stale partial file (a killed process) never counts as done
    partial_path(out / "a.tif").write_bytes(b"II*\x00garbage")
    assert existing_mask(out, "a") is None
    s1 = predict(loaded, [src], out, stream=True, quiet=True)
    assert [p.name for p in s1.done] == ["a.tif"] and s1.streamed
    assert not partial_path(out / "a.tif").exists()
    assert tifffile.imread(out / "a.tif").shape == (300, 260)
    s2 = predict(loaded, [src], out, stream=True, quiet=True)
    assert s2.done == [] and [p.name for p in s2.skipped] == ["a.tif"]
