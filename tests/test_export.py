"""biomedseg export (ONNX, TorchScript, bioimage.io) with its parity check, and predict from
exported files and with --engine onnxruntime: the same masks as predict RUN."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_dataset

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import torch  # noqa: E402

from biomedseg.core.errors import UserError  # noqa: E402

#: tiny networks of the three architectures the issue names
ARCHS = {
    "unet": {"depth": 3, "base_channels": 8, "num_res_units": 0, "classifier_head": True},
    "resnet34-unet": {"width": 8},
    "segnet": {"stages": 3, "base_channels": 8},
}
POSTPROCESS = """
classes:
  cell: {threshold: 0.4, min_object_area: 6}
gating: {min_classifier_probability: 0.3}
"""


def make_run(
    root: Path,
    data: Path,
    arch: str,
    *,
    channels: int = 1,
    clip: bool = False,
    postprocess: str | None = None,
    source: Path | None = None,
) -> Path:
    """A run folder holding a freshly initialised tiny network (3 classes) on ``data``."""
    from biomedseg.data.discovery import find_pairs
    from biomedseg.models import create_model
    from biomedseg.runs import DatasetInfo, write_run

    kwargs = ARCHS[arch]
    torch.manual_seed(0)
    model = create_model(arch, channels, 3, **kwargs)
    ids = sorted(s.id for s in find_pairs(data / "images", data / "masks"))
    norm = {"mean": [90.0 + 5 * c for c in range(channels)], "std": [40.0 + 3 * c for c in range(channels)]}
    if clip:
        norm["clip"] = {"low": [10.0 + c for c in range(channels)], "high": [200.0 - 7 * c for c in range(channels)]}
    info = DatasetInfo(
        classes=["background", "cell", "filament"],
        background=0,
        palette={"values": [[0], [1], [2]]},
        channels=channels,
        n_classes=3,
        normalization=norm,
        split={"train": ids[3:], "val": ids[:3]},
        source=str((source or data).resolve()),
    )
    config = {
        "model": arch,
        "model_kwargs": kwargs,
        "patch_size": 32,
        "batch_size": 4,
        "device": "cpu",
        "precision": "fp32",
        "num_threads": 1,
    }
    run = write_run(root, config, info, {"model": model.state_dict()}).root
    if postprocess:
        (run / "postprocess.yaml").write_text(postprocess)
    return run


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    from biomedseg.io import read_raw

    return {p.name: read_raw(p) for p in sorted(folder.glob("*.png")) if not p.stem.endswith("_overlay")}


@pytest.fixture(scope="module")
def unet_run(synthetic_data, tmp_path_factory) -> Path:
    """U-Net with a classifier head and a post-processing chain that uses it."""
    return make_run(tmp_path_factory.mktemp("unet") / "run", synthetic_data, "unet", postprocess=POSTPROCESS)


@pytest.fixture(scope="module")
def unet_exports(unet_run, tmp_path_factory) -> dict:
    from biomedseg.export.writer import export_run

    out = tmp_path_factory.mktemp("exports")
    return {
        fmt: export_run(unet_run, fmt, out / f"model{suffix}")
        for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt"), ("bioimageio", ".zip"))
    }


# ---------------------------------------------------------------- export and parity


def _assert_passed(result, fmt):
    assert result.path.is_file()
    assert not list(result.path.parent.glob("*.partial*"))
    stored = json.loads(result.parity_path.read_text())
    assert stored["format"] == fmt
    for report in stored["reports"]:
        assert report["passed"]
        assert report["max_abs_diff"] <= 1e-4
        assert report["argmax_agreement"] >= 0.9999
        assert report["pixels"] > 0 and "validation images" in report["inputs"]
    assert len(stored["reports"]) == (2 if fmt == "bioimageio" else 1)


def test_unet_with_head_exports_to_all_formats(unet_exports):
    for fmt, result in unet_exports.items():
        _assert_passed(result, fmt)
        assert result.metadata["network"]["outputs"] == ["logits", "image_logit"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet34-unet", "segnet"])
def test_architectures_export_to_all_formats(arch, synthetic_data, tmp_path):
    from biomedseg.export.writer import export_run

    run = make_run(tmp_path / "run", synthetic_data, arch)
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt"), ("bioimageio", ".zip")):
        result = export_run(run, fmt, tmp_path / f"{arch}{suffix}")
        _assert_passed(result, fmt)
        assert result.metadata["network"]["architecture"] == arch
        assert result.metadata["network"]["classifier_head"] == "none"


def test_exported_graph_has_dynamic_batch_and_size(unet_exports, unet_run):
    """Batch sizes and image sizes other than the traced ones (also not size multiples)."""
    from biomedseg.inference.exported.engines import open_exported
    from biomedseg.inference.run import load_run

    ref = load_run(unet_run, device="cpu").model
    for fmt in ("onnx", "torchscript"):
        net = open_exported(unet_exports[fmt].path, device="cpu").model
        for shape in [(1, 1, 32, 32), (3, 1, 44, 70), (2, 1, 96, 40)]:
            x = torch.randn(*shape)
            with torch.no_grad():
                expected = ref(x)
                got = net(x)
            assert got.shape == expected.shape
            assert float((got - expected).abs().max()) < 1e-4, (fmt, shape)
            assert net.class_logits.shape == (shape[0],)


@pytest.mark.slow
def test_parity_failure_is_refused_and_leaves_nothing(unet_run, tmp_path, monkeypatch):
    from biomedseg.export.writer import export_run
    from biomedseg.inference.exported import engines as export_engines

    original = export_engines.OrtRunner.__call__

    def off(self, x):
        logits, head = original(self, x)
        return logits + 0.05 * torch.arange(logits.shape[1], dtype=logits.dtype)[:, None, None], head

    monkeypatch.setattr(export_engines.OrtRunner, "__call__", off)
    out = tmp_path / "model.onnx"
    with pytest.raises(UserError, match="parity check failed") as err:
        export_run(unet_run, "onnx", out)
    assert "\n" not in str(err.value) and "max |p - p_torch|" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_bad_outputs(unet_run, unet_exports, tmp_path):
    from biomedseg.export.writer import export_run

    with pytest.raises(UserError, match=r"\*\.onnx"):
        export_run(unet_run, "onnx", tmp_path / "model.pt")
    with pytest.raises(UserError, match="already exists"):
        export_run(unet_run, "onnx", unet_exports["onnx"].path)
    with pytest.raises(UserError, match="choose one of"):
        export_run(unet_run, "tflite", tmp_path / "model.onnx")


@pytest.mark.slow
def test_parity_on_synthetic_images_when_data_is_gone(synthetic_data, tmp_path):
    """Three channels, clipping bounds per channel, and no training data folder."""
    from biomedseg.export.writer import export_run

    run = make_run(tmp_path / "run", synthetic_data, "segnet", channels=3, clip=True, source=tmp_path / "gone")
    result = export_run(run, "bioimageio", tmp_path / "model.zip")
    assert all(r.passed and "synthetic" in r.inputs for r in result.parity)
    assert result.metadata["normalization"]["clip"]["high"] == [200.0, 193.0, 186.0]


# ---------------------------------------------------------------- metadata


def test_metadata_round_trip(unet_run, unet_exports):
    from biomedseg.inference.exported.engines import open_exported
    from biomedseg.inference.exported.format import EXPORT_VERSION, metadata_json, parse_metadata
    from biomedseg.inference.run import load_run

    run = load_run(unet_run, device="cpu")
    for result in unet_exports.values():
        exported = open_exported(result.path, device="cpu")
        doc = exported.metadata
        assert doc["version"] == EXPORT_VERSION and doc["format"] == "biomedseg.export"
        assert exported.info.classes == run.info.classes and exported.info.palette == run.info.palette
        assert exported.normalizer == run.normalizer
        assert (
            exported.settings.patch_size == run.settings.patch_size
            and exported.settings.overlap == run.settings.overlap
        )
        assert exported.predictor().batch_size == run.predictor().batch_size
        assert exported.postprocess() == run.postprocess() and exported.postprocess() is not None
        assert doc["sliding_window"]["blending"] == "gaussian"
        assert "dropped" in doc["network"]["deep_supervision"]
        assert parse_metadata(metadata_json(doc), "x") == doc
    newer = {**unet_exports["onnx"].metadata, "version": EXPORT_VERSION + 1}
    with pytest.raises(UserError, match="newer"):
        parse_metadata(metadata_json(newer), "model.onnx")
    with pytest.raises(UserError, match="no biomedseg metadata"):
        parse_metadata(None, "model.onnx")


def test_onnx_metadata_props_and_opset(unet_exports):
    import onnx

    from biomedseg.inference.exported.graph import EXPORTER_OPSET, onnx_metadata, ort_max_opset

    proto = onnx.load(str(unet_exports["onnx"].path))
    doc = json.loads(onnx_metadata(proto))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert doc["network"]["onnx_opset"] == opset == min(EXPORTER_OPSET, ort_max_opset())
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str) and dims[1] == 1


# ---------------------------------------------------------------- bioimage.io


def test_bioimageio_package_passes_bioimageio_core_test(unet_exports):
    pytest.importorskip("bioimageio.core")
    from bioimageio.core import test_model

    path = unet_exports["bioimageio"].path
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    assert {
        "rdf.yaml",
        "weights.onnx",
        "weights_torchscript.pt",
        "test_input.npy",
        "cover.png",
        "README.md",
        "test_output_probabilities.npy",
        "test_output_image_logit.npy",
    } <= names
    summary = test_model(path)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


def test_bioimageio_rdf_fields(unet_exports):
    import yaml

    with zipfile.ZipFile(unet_exports["bioimageio"].path) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert rdf["license"] == "CC-BY-4.0" and rdf["authors"] and rdf["cite"]
    assert set(rdf["weights"]) == {"onnx", "torchscript"}
    assert [o["id"] for o in rdf["outputs"]] == ["probabilities", "image_logit"]
    assert rdf["config"]["biomedseg"]["postprocess"]["gating"]["min_classifier_probability"] == 0.3


# ---------------------------------------------------------------- predict from exports


def test_predict_from_exports_equals_predict_run(unet_run, unet_exports, synthetic_data, tmp_path):
    from biomedseg.inference.predict.batch import predict

    images = sorted((synthetic_data / "images").iterdir())[:4]
    predict(unet_run, images, tmp_path / "run", quiet=True, device="cpu")
    expected = masks_of(tmp_path / "run")
    assert len(expected) == 4
    sources = [
        (unet_exports["onnx"].path, "auto"),
        (unet_exports["torchscript"].path, "auto"),
        (unet_exports["bioimageio"].path, "onnxruntime"),
        (unet_exports["bioimageio"].path, "torch"),
        (unet_run, "onnxruntime"),
    ]
    for i, (source, engine) in enumerate(sources):
        s = predict(source, images, tmp_path / f"out{i}", quiet=True, device="cpu", engine=engine, instances=True)
        assert not s.failed
        got = masks_of(tmp_path / f"out{i}")
        assert got.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{source} {engine} {name}")


def test_tta_from_onnx_equals_tta_from_run(unet_run, unet_exports, synthetic_data, tmp_path):
    from biomedseg.inference.predict.batch import predict

    images = sorted((synthetic_data / "images").iterdir())[:2]
    for name, source in (("run", unet_run), ("onnx", unet_exports["onnx"].path)):
        predict(source, images, tmp_path / name, quiet=True, device="cpu", tta="flips+rot90", overlays=False)
    expected = masks_of(tmp_path / "run")
    assert len(expected) == 2
    for name, mask in masks_of(tmp_path / "onnx").items():
        np.testing.assert_array_equal(mask, expected[name], err_msg=name)


def test_engine_auto_without_onnxruntime_is_torch(unet_run, monkeypatch):
    import importlib.util

    from biomedseg.inference.exported.engines import open_model_source

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    loaded = open_model_source(unet_run, device="cpu", engine="auto")
    assert isinstance(loaded.model, torch.nn.Module) and not hasattr(loaded.model, "runner")


def test_predict_engine_errors(unet_exports, unet_run, tmp_path):
    from biomedseg.inference.exported.engines import open_model_source

    with pytest.raises(UserError, match="ONNX Runtime"):
        open_model_source(unet_exports["onnx"].path, engine="torch")
    with pytest.raises(UserError, match="choose one of"):
        open_model_source(unet_run, engine="tensorrt")
    with pytest.raises(UserError, match="no such file"):
        open_model_source(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(UserError, match="not a TorchScript model"):
        open_model_source(bad)


@pytest.mark.slow
def test_cli_export_then_predict_from_the_file(unet_run, synthetic_data, tmp_path):
    from test_cli import assert_user_error, run_cli

    r = run_cli("export", unet_run, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert r.returncode == 0, r.stderr
    assert "parity torch: max |p - p_torch|" in r.stdout and "m.pt.parity.json" in r.stdout
    assert_user_error(
        run_cli("export", unet_run, "--format", "torchscript", "--out", tmp_path / "m.pt"), "already exists"
    )
    image = sorted((synthetic_data / "images").iterdir())[0]
    r = run_cli("predict", tmp_path / "m.pt", image, "--out", tmp_path / "p", "--no-overlays")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p" / f"{image.stem}.png").is_file()
    assert_user_error(
        run_cli("predict", tmp_path / "m.pt", image, "--out", tmp_path / "q", "--engine", "onnxruntime"),
        "runs in PyTorch",
    )


def assert_masks_match(got: dict, expected: dict, run, images: dict) -> None:
    """Exported and PyTorch masks are equal, except at pixels where PyTorch's two largest class
    probabilities are closer than the parity tolerance allows to tell apart (float rounding of
    another runtime's kernels decides those), and at most 0.01% of the pixels."""
    from biomedseg.inference.predict.core import predict_proba_image
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image

    assert got.keys() == expected.keys() and expected
    differ = {name: got[name] != expected[name] for name in expected}
    assert sum(int(d.sum()) for d in differ.values()) <= 1e-4 * sum(m.size for m in expected.values())
    loaded = load_run(run, device="cpu")
    for name, d in differ.items():
        if d.any():
            proba = np.sort(predict_proba_image(loaded, loaded.predictor(), read_image(images[name])), axis=0)
            assert float((proba[-1] - proba[-2])[d].max()) < 1e-3, name


@pytest.mark.slow
@pytest.mark.shared
def test_predict_onnx_equals_predict_run_on_shared_test_split(tmp_path):
    """A briefly trained run on the test split of isbi2012_em."""
    from biomedseg.export.writer import export_run
    from biomedseg.inference.predict.batch import predict
    from biomedseg.training.api import train

    data = shared_dataset("isbi2012_em")
    run = train(
        data,
        tmp_path / "run",
        epochs=1,
        seed=0,
        quiet=True,
        iterations_per_epoch=3,
        patch_size=64,
        batch_size=4,
        num_threads=2,
        model="unet",
        precision="fp32",
        model_kwargs={"depth": 3, "base_channels": 8, "num_res_units": 0},
    )
    result = export_run(run, "onnx", tmp_path / "model.onnx")
    assert all(r.passed for r in result.parity)
    test_ids = json.loads((data / "dataset.json").read_text())["split"]["test"]
    images = [p for p in sorted((data / "images").iterdir()) if p.stem in set(test_ids)]
    assert len(images) == len(test_ids) > 0
    predict(run, images, tmp_path / "run_masks", quiet=True, device="cpu", overlays=False)
    predict(result.path, images, tmp_path / "onnx_masks", quiet=True, device="cpu", overlays=False)
    expected = masks_of(tmp_path / "run_masks")
    assert len(expected) == len(images)
    assert_masks_match(masks_of(tmp_path / "onnx_masks"), expected, run, {f"{p.stem}.png": p for p in images})


def test_streamed_prediction_from_onnx_equals_run(unet_run, unet_exports, synthetic_data, tmp_path):
    """The band-by-band predictor (huge images) runs the exported network too."""
    import tifffile

    from biomedseg.inference.predict.batch import predict

    image = sorted((synthetic_data / "images").iterdir())[0]
    for name, source in (("run", unet_run), ("onnx", unet_exports["onnx"].path)):
        s = predict(source, [image], tmp_path / name, quiet=True, device="cpu", stream=True, postprocess=False)
        assert s.streamed == [image]
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "onnx" / f"{image.stem}.tif"),
        tifffile.imread(tmp_path / "run" / f"{image.stem}.tif"),
    )
