"""``predict`` says how sure it is (``predictions.csv``, ``--uncertainty`` maps), warns about inputs
unlike the training data, applies the calibration temperature; ``train`` writes ``RUN/trust.json``."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import tifffile

from conftest import TINY, write_fake_run

pytestmark = pytest.mark.usefixtures("one_thread_module")

QUIET = {"quiet": True, "compile": "off", "overlays": False}


def _rows(path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        return {r["file"]: r for r in csv.DictReader(fh)}


def _mask(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def _disk(blur: float = 0.0, value: float = 255.0) -> np.ndarray:
    """64x64 uint8: a disk of ``value`` on 0, edges blurred by a Gaussian of ``blur`` pixels."""
    from scipy import ndimage

    yy, xx = np.mgrid[:64, :64]
    img = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 14**2, value, 0.0)
    if blur:
        img = ndimage.gaussian_filter(img, blur)
    return np.round(img).astype(np.uint8)


# ---------------------------------------------------------------------------- a fixed network


def test_uncertainty_map_is_float16_ome_tiff_with_pixel_size_and_higher_on_blurred_objects(threshold_run, tmp_path):
    from biomedseg import predict
    from biomedseg.io.ome import write_ome_tiff
    from biomedseg.io.pixel_size import pixel_size

    inputs = {"crisp": _disk(), "blurred": _disk(blur=4.0), "faint": _disk(value=100.0)}
    for name, img in inputs.items():
        write_ome_tiff(tmp_path / f"{name}.tif", img, (0.5, 0.5))
    s = predict(
        threshold_run, [str(tmp_path / f"{n}.tif") for n in inputs], tmp_path / "out", uncertainty=True, **QUIET
    )
    assert not s.failed and s.predictions == tmp_path / "out" / "predictions.csv"
    maps = {}
    for name in inputs:
        path = tmp_path / "out" / f"{name}_uncertainty.tif"
        maps[name] = tifffile.imread(path)
        assert maps[name].dtype == np.float16 and maps[name].shape == (64, 64)
        assert pixel_size(path) == pytest.approx((0.5, 0.5))
    assert float(maps["crisp"].max()) < 1e-3  # logits of +-16: sure everywhere
    assert maps["blurred"].mean() > 20 * max(float(maps["crisp"].mean()), 1e-6)
    assert maps["faint"].mean() > maps["blurred"].mean()  # the whole object sits at the decision boundary
    rows = _rows(s.predictions)
    score = {n: float(rows[str(tmp_path / f"{n}.tif")]["uncertainty"]) for n in inputs}
    assert score["crisp"] < score["blurred"] < score["faint"]
    assert all(rows[str(tmp_path / f"{n}.tif")]["uncertainty_source"] == "entropy" for n in inputs)


def test_predictions_csv_columns_values_failed_input_and_no_trust_json(threshold_run, tmp_path, caplog):
    from biomedseg import predict
    from biomedseg.io import write_png

    two = _disk()
    two[:, 56:] = 255  # a second object at the right border
    write_png(tmp_path / "a.png", two)
    write_png(tmp_path / "empty.png", np.zeros((40, 50), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    files = [str(tmp_path / n) for n in ("a.png", "empty.png", "broken.png")]
    s = predict(threshold_run, files, tmp_path / "out", **QUIET)
    assert [p.name for p, _ in s.failed] == ["broken.png"]
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert list(rows) == files
    header = list(next(iter(rows.values())))
    assert header == [
        "file",
        "height",
        "width",
        "area_cell",
        "objects_cell",
        "mean_foreground_probability",
        "uncertainty",
        "ood_score",
        "ood_flag",
        "ood_reasons",
        "uncertainty_source",
        "note",
    ]
    a, empty, broken = rows[files[0]], rows[files[1]], rows[files[2]]
    mask = _mask(tmp_path / "out" / "a.png")
    assert (int(a["height"]), int(a["width"])) == (64, 64)
    assert int(a["area_cell"]) == int((mask == 1).sum()) > 0 and int(a["objects_cell"]) == 2
    assert float(a["mean_foreground_probability"]) > 0.99
    assert (int(empty["area_cell"]), int(empty["objects_cell"]), empty["mean_foreground_probability"]) == (0, 0, "")
    assert a["ood_score"] == a["ood_flag"] == a["ood_reasons"] == ""  # no trust.json: empty, no failure
    assert "cannot read image" in broken["note"] and broken["area_cell"] == ""
    # a second call skips the finished inputs and keeps their rows
    write_png(tmp_path / "b.png", _disk())
    predict(threshold_run, files[:2] + [str(tmp_path / "b.png")], tmp_path / "out", **QUIET)
    again = _rows(tmp_path / "out" / "predictions.csv")
    assert again[files[0]] == a  # the skipped input's row, kept from the first call
    assert int(again[str(tmp_path / "b.png")]["area_cell"]) == int((_disk() > 100).sum())


def test_temperature_changes_written_probabilities_not_the_mask(threshold_run, tmp_path):
    from biomedseg import predict
    from biomedseg.io import write_png
    from biomedseg.metrics.calibration import temper_probabilities
    from biomedseg.runs.postprocess import PostprocessConfig, save_postprocess

    write_png(tmp_path / "x.png", _disk(blur=3.0))
    opts = dict(QUIET, probabilities=True, uncertainty=True)
    predict(threshold_run, [str(tmp_path / "x.png")], tmp_path / "t1", **opts)
    save_postprocess(PostprocessConfig(temperature=2.5), threshold_run)
    predict(threshold_run, [str(tmp_path / "x.png")], tmp_path / "t2", **opts)
    p1, p2 = (tifffile.imread(tmp_path / d / "x_proba.tif").astype(np.float32) for d in ("t1", "t2"))
    assert np.abs(p1 - p2).max() > 0.05
    np.testing.assert_allclose(p2, temper_probabilities(p1, 2.5), atol=2e-3)
    np.testing.assert_array_equal(_mask(tmp_path / "t1" / "x.png"), _mask(tmp_path / "t2" / "x.png"))
    u1, u2 = (tifffile.imread(tmp_path / d / "x_uncertainty.tif").astype(np.float32) for d in ("t1", "t2"))
    assert u2.mean() > u1.mean()  # softer probabilities: more entropy
    r1, r2 = (next(iter(_rows(tmp_path / d / "predictions.csv").values())) for d in ("t1", "t2"))
    assert float(r2["mean_foreground_probability"]) < float(r1["mean_foreground_probability"])
    # --no-postprocess ignores postprocess.yaml, its temperature included
    predict(threshold_run, [str(tmp_path / "x.png")], tmp_path / "t3", postprocess=False, **opts)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "t3" / "x_proba.tif").astype(np.float32), p1)


def _shifted_member(threshold_run, tmp_path, bias: float):
    import torch

    saved = torch.load(threshold_run / "checkpoints" / "best.pt", weights_only=True)["model"]
    state = {k: v.clone() for k, v in saved.items()}
    (key,) = [k for k in state if k.endswith("bias")]
    state[key][1] = bias
    return write_fake_run(tmp_path / "m2", "_test_threshold_logits", state, None, [], patch_size=32, batch_size=4)


def test_ensemble_members_temperature_before_averaging_and_mutual_information(threshold_run, tmp_path):
    from biomedseg import predict
    from biomedseg.io import write_png
    from biomedseg.runs.ensemble import write_ensemble
    from biomedseg.runs.postprocess import PostprocessConfig, save_postprocess

    ens = write_ensemble(tmp_path / "ens", [threshold_run, _shifted_member(threshold_run, tmp_path, 8.0)]).root
    save_postprocess(PostprocessConfig(temperature=2.0), ens)
    ramp = np.tile(np.linspace(0, 255, 64), (32, 1)).round().astype(np.uint8)
    write_png(tmp_path / "ramp.png", ramp)
    s = predict(ens, [str(tmp_path / "ramp.png")], tmp_path / "out", probabilities=True, uncertainty=True, **QUIET)
    assert not s.failed
    z = 8.0 * (ramp.astype(np.float64) - 100.0) / 50.0  # member 1's foreground logit; member 2: + 8

    def fg(logit):
        return 1.0 / (1.0 + np.exp(-logit / 2.0))

    p = tifffile.imread(tmp_path / "out" / "ramp_proba.tif").astype(np.float64)
    np.testing.assert_allclose(p[1], 0.5 * (fg(z) + fg(z + 8.0)), atol=2e-3)
    mi = tifffile.imread(tmp_path / "out" / "ramp_uncertainty.tif").astype(np.float32)
    both_sure = (z <= -15) | (z >= 20)  # tempered logits of both members beyond -7 or +10
    disagree = (z < -2) & (z + 8 > 2)
    assert both_sure.any() and disagree.any()
    assert mi[disagree].mean() > 0.1 and mi[both_sure].max() < 0.02
    row = next(iter(_rows(s.predictions).values()))
    assert row["uncertainty_source"] == "member_mutual_information"


def test_streamed_input_gets_a_row_and_a_band_by_band_uncertainty_map(threshold_run, tmp_path):
    from biomedseg import predict
    from biomedseg.io import write_png

    write_png(tmp_path / "x.png", np.tile(_disk(blur=3.0), (2, 3)))
    opts = dict(QUIET, uncertainty=True)
    predict(threshold_run, [str(tmp_path / "x.png")], tmp_path / "mem", stream=False, **opts)
    s = predict(threshold_run, [str(tmp_path / "x.png")], tmp_path / "str", stream=True, **opts)
    assert s.streamed and not s.failed
    mem, st = (next(iter(_rows(tmp_path / d / "predictions.csv").values())) for d in ("mem", "str"))
    assert st["area_cell"] == mem["area_cell"] and st["objects_cell"] == "" and "streamed" in st["note"]
    for key in ("mean_foreground_probability", "uncertainty"):
        assert float(st[key]) == pytest.approx(float(mem[key]), abs=1e-4)
    um, us = (tifffile.imread(tmp_path / d / "x_uncertainty.tif") for d in ("mem", "str"))
    assert us.dtype == np.float16 and us.shape == um.shape == (128, 192)
    np.testing.assert_allclose(us.astype(np.float32), um.astype(np.float32), atol=2e-3)
    assert not list((tmp_path / "str").glob("*.zarr"))  # the temporary band store is gone


# ---------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def described_run(synthetic_data, tmp_path_factory):
    """A run trained through the public ``biomedseg.train`` (which writes ``trust.json``)."""
    import biomedseg

    out = tmp_path_factory.mktemp("described") / "run"
    return biomedseg.train(synthetic_data, out, epochs=2, seed=0, quiet=True, **TINY)


@pytest.mark.slow
def test_train_writes_trust_json(described_run):
    from biomedseg.trust.descriptor import read_description

    desc = read_description(described_run)
    assert desc is not None and desc["channels"] == 1 and desc["grey"] and not desc["colour"]
    assert desc["features"] is not None and set(desc["thresholds"]) >= {"intensity", "features"}
    assert desc["image_sizes"]["n"] == len(json.loads((described_run / "dataset.json").read_text())["split"]["train"])


@pytest.mark.slow
def test_other_modality_is_flagged_training_images_are_not(described_run, synthetic_data, tmp_path, caplog):
    from biomedseg import predict
    from biomedseg.io import write_png

    train_ids = json.loads((described_run / "dataset.json").read_text())["split"]["train"]
    train = [str(synthetic_data / "images" / f"{i}.png") for i in train_ids]
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    write_png(tmp_path / "noise.png", noise)
    with caplog.at_level(logging.WARNING, logger="biomedseg"):
        s = predict(described_run, train + [str(tmp_path / "noise.png")], tmp_path / "out", **QUIET)
    rows = _rows(s.predictions)
    assert [p.name for p in s.flagged] == ["noise.png"]
    assert (
        rows[str(tmp_path / "noise.png")]["ood_flag"] == "True"
        and float(rows[str(tmp_path / "noise.png")]["ood_score"]) > 1
    )
    assert "colour image; the training images are grey" in rows[str(tmp_path / "noise.png")]["ood_reasons"]
    assert all(rows[f]["ood_flag"] == "False" for f in train)
    assert (tmp_path / "out" / "noise.png").is_file()  # still predicted
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("noise.png: unlike the training data" in w for w in warnings) == 1
    assert any(w.startswith(f"1 of {len(train) + 1} input(s) unlike the training data") for w in warnings)


@pytest.mark.slow
def test_tta_uncertainty_costs_no_extra_pass_and_keeps_the_tta_prediction(described_run, synthetic_data, tmp_path):
    from biomedseg import predict

    f = [str(synthetic_data / "images" / "syn_010.png")]
    predict(described_run, f, tmp_path / "a", tta="flips", probabilities=True, **QUIET)
    predict(described_run, f, tmp_path / "b", tta="flips", probabilities=True, uncertainty=True, **QUIET)
    pa, pb = (tifffile.imread(tmp_path / d / "syn_010_proba.tif").astype(np.float32) for d in "ab")
    np.testing.assert_allclose(pa, pb, atol=2e-3)  # mean of the transforms' passes == the TTA pass
    u = tifffile.imread(tmp_path / "b" / "syn_010_uncertainty.tif").astype(np.float32)
    assert u.max() > 0  # the four flips of a little-trained network disagree somewhere
    # the map is the mutual information of the four flips' own predictions
    from biomedseg.engine.sliding_window import tta_transforms
    from biomedseg.inference.predict.core import predict_proba_image
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image
    from biomedseg.metrics.uncertainty import mutual_information_map

    run, samples = load_run(described_run, device="cpu"), []
    for t in tta_transforms("flips"):
        predictor = run.predictor()
        predictor.transforms = [t]
        samples.append(predict_proba_image(run, predictor, read_image(f[0])))
    np.testing.assert_allclose(u, mutual_information_map(np.stack(samples)), atol=1e-3)
    assert next(iter(_rows(tmp_path / "b" / "predictions.csv").values()))["uncertainty_source"] == (
        "tta_mutual_information"
    )


@pytest.mark.slow
def test_exports_carry_the_description_and_exported_predict_uses_it(described_run, tmp_path):
    from biomedseg import predict
    from biomedseg.inference.exported.format import build_metadata, exported_run
    from biomedseg.inference.run import load_run
    from biomedseg.io import write_png

    loaded = load_run(described_run, device="cpu")
    doc = build_metadata(loaded, None, {}, "best")
    assert doc["trust"] == json.loads((described_run / "trust.json").read_text())
    assert str(described_run) not in json.dumps(doc["trust"])
    exported = exported_run(json.loads(json.dumps(doc)), loaded.model, tmp_path / "m.onnx", loaded.device, "torch")
    write_png(tmp_path / "noise.png", np.random.default_rng(1).integers(0, 256, size=(64, 96, 3), dtype=np.uint8))
    s = predict(exported, [str(tmp_path / "noise.png")], tmp_path / "out", **QUIET)
    assert [p.name for p in s.flagged] == ["noise.png"]


def test_cli_predict_uncertainty_flag_and_summary_line(threshold_run, tmp_path):
    from typer.testing import CliRunner

    from biomedseg.cli import app
    from biomedseg.io import write_png

    write_png(tmp_path / "x.png", _disk(blur=3.0))
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app, ["predict", str(threshold_run), str(tmp_path / "x.png"), "--out", str(out), "--uncertainty", "-q"]
    )
    assert r.exit_code == 0, r.output
    assert f"wrote {out / 'predictions.csv'}" in r.output
    assert (out / "x_uncertainty.tif").is_file() and (out / "x.png").is_file()


def test_a_broken_description_costs_no_mask(threshold_run, tmp_path, caplog):
    from biomedseg import predict
    from biomedseg.io import write_png

    write_png(tmp_path / "x.png", _disk())
    (threshold_run / "trust.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="biomedseg"):
        s = predict(threshold_run, [str(tmp_path / "x.png")], tmp_path / "a", **QUIET)
    assert s.done and not s.failed and any("training description unreadable" in r.getMessage() for r in caplog.records)
    (threshold_run / "trust.json").write_text(json.dumps({"channels": 1, "thresholds": {}}))  # no intensity entry
    s = predict(threshold_run, [str(tmp_path / "x.png")], tmp_path / "b", **QUIET)
    row = next(iter(_rows(s.predictions).values()))
    assert s.done and not s.failed and (tmp_path / "b" / "x.png").is_file()
    assert row["ood_flag"] == "" and row["note"].startswith("no out-of-distribution score (KeyError")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cluster_prediction_writes_the_same_predictions_csv(tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client

    from biomedseg import predict
    from biomedseg.inference.predict.distributed import local_cluster
    from biomedseg.io import write_png
    from biomedseg.workflows.prediction import predict_on_cluster
    from test_distributed import make_run  # a registered architecture: the workers build it too

    for name, img in {"crisp": _disk(), "blurred": _disk(blur=4.0)}.items():
        write_png(tmp_path / f"{name}.png", img)
    (tmp_path / "broken.png").write_bytes(b"no")
    files = [str(tmp_path / n) for n in ("crisp.png", "blurred.png", "broken.png")]
    run = make_run(tmp_path / "run")
    local = predict(run, files, tmp_path / "local", uncertainty=True, threads=1, **QUIET)
    with local_cluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        s = predict_on_cluster(run, files, tmp_path / "dask", client=client, uncertainty=True, threads=1, **QUIET)
    assert [p.name for p, _ in s.failed] == ["broken.png"] and len(s.done) == 2
    a, b = _rows(local.predictions), _rows(s.predictions)
    assert list(a) == list(b) == files
    for f in files[:2]:
        assert a[f].keys() == b[f].keys() and a[f]["area_cell"] == b[f]["area_cell"]
        for k in ("mean_foreground_probability", "uncertainty"):
            assert float(b[f][k]) == pytest.approx(float(a[f][k]), abs=1e-5)
    assert "cannot read image" in b[files[2]]["note"]
    assert (tmp_path / "dask" / "blurred_uncertainty.tif").is_file()
