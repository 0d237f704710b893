"""``biomedseg export --format onnx --int8``: a QDQ int8 ONNX calibrated on the run's validation
tiles (or ``--calibrate DATA``), predicted through the ordinary exported path; its user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_cli import assert_user_error, run_cli  # noqa: E402
from test_export import make_run  # noqa: E402


@pytest.fixture(scope="module")
def run(synthetic_data, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("int8") / "run", synthetic_data, "unet")


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    """A tiny U-Net trained 6 short epochs (36 steps): confident enough that int8 rounding flips few
    pixels (the 2-epoch ``trained_run`` is near-tied on ~2 % of them)."""
    from biomedseg.training.api import train
    from conftest import TINY

    return train(synthetic_data, tmp_path_factory.mktemp("int8t") / "run", epochs=6, seed=0, quiet=True, **TINY)


def _op_types(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_export_is_qdq_and_predicts_like_fp32(trained, synthetic_data, tmp_path):
    from biomedseg.inference.exported.graph import onnx_metadata
    from biomedseg.io import read_raw

    run = trained
    out = tmp_path / "m8.onnx"
    r = run_cli("export", run, "--format", "onnx", "--int8", "--out", out)
    assert r.returncode == 0, r.stderr
    ops = _op_types(out)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    doc = json.loads(onnx_metadata(out))
    q = doc["quantization"]
    assert doc["int8"] is True and q["int8"] is True
    assert q["calibration"] == f"validation images of {synthetic_data.name}"
    assert q["tiles"] > 0 and q["tile_size"] == 64
    stored = json.loads(out.with_name(out.name + ".parity.json").read_text())
    assert stored["int8"] is True and stored["reports"][0]["passed"]

    # every synthetic image (train, validation, test), predicted both ways through `predict`
    images = sorted((synthetic_data / "images").iterdir())
    for source, folder in ((run, "fp32"), (out, "int8")):
        r = run_cli("predict", source, synthetic_data / "images", "--out", tmp_path / folder, "--no-overlays")
        assert r.returncode == 0, r.stderr
    a = np.stack([read_raw(tmp_path / "fp32" / f"{p.stem}.png") for p in images])
    b = np.stack([read_raw(tmp_path / "int8" / f"{p.stem}.png") for p in images])
    assert len(np.unique(a)) > 1  # the network does not predict one class everywhere
    assert (a == b).mean() >= 0.99


def test_calibrate_on_a_folder(trained, synthetic_data, tmp_path):
    from biomedseg.export.quantize import Int8Options
    from biomedseg.export.writer import export_run

    result = export_run(trained, "onnx", tmp_path / "c.onnx", int8=Int8Options(calibrate=synthetic_data, max_tiles=5))
    q = result.metadata["quantization"]
    assert q["calibration"] == f"images of {synthetic_data.name}" and q["tiles"] == 5


def test_calibration_tiles_are_normalised_tiles_of_the_images(run):
    from biomedseg.export.quantize import calibration_tiles
    from biomedseg.inference.run import load_run

    loaded = load_run(run, device="cpu")
    image = np.full((70, 20, 1), 90.0 + 40.0, np.float32)  # (mean + std) of make_run: 1 after normalising
    tiles = calibration_tiles(loaded, [("a", image)], max_tiles=10)
    assert len(tiles) == 2  # 70 rows: two 32-row tiles; 20 columns padded to one tile
    assert all(t.shape == (1, 32, 32) and t.dtype == np.float32 for t in tiles)
    assert np.allclose(np.concatenate(tiles), 1.0)
    assert len(calibration_tiles(loaded, [("a", image)] * 5, max_tiles=3)) == 3


def test_int8_user_errors(run, synthetic_data, tmp_path):
    assert_user_error(
        run_cli("export", run, "--format", "torchscript", "--int8", "--out", tmp_path / "m.pt"),
        "--int8: only with --format onnx",
    )
    assert_user_error(
        run_cli("export", run, "--format", "onnx", "--calibrate", synthetic_data, "--out", tmp_path / "m.onnx"),
        "--calibrate: only with --int8",
    )
    (tmp_path / "empty").mkdir()
    assert_user_error(
        run_cli(
            "export", run, "--format", "onnx", "--int8", "--calibrate", tmp_path / "empty", "--out", tmp_path / "e.onnx"
        ),
        "no images to calibrate",
    )
    gone = make_run(tmp_path / "gone_run", synthetic_data, "unet", source=tmp_path / "gone")
    assert_user_error(
        run_cli("export", gone, "--format", "onnx", "--int8", "--out", tmp_path / "g.onnx"), "pass --calibrate DATA"
    )
    assert not list(tmp_path.glob("*.onnx"))
