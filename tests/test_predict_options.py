"""The predict chain's settings record and options object, its thread count, and one failed input
not stopping a batch (an OSError while writing, a RuntimeError in the network, a truncated TIFF)."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_fake_run


def make_run(run_dir, **config):
    from biomedseg.models import create_model

    torch.manual_seed(0)
    kw = {"depth": 3, "base_channels": 8, "num_res_units": 1}
    return write_fake_run(
        run_dir,
        "unet",
        create_model("unet", 1, 2, **kw).state_dict(),
        None,
        [],
        patch_size=64,
        batch_size=6,
        model_kwargs=kw,
        **config,
    )


def write_pngs(folder, names, shape=(70, 60), value=None):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        a = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 100, shape, dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_settings_read_once_from_the_run(tmp_path, monkeypatch):
    import biomedseg.runs.folder as folder
    from biomedseg.inference.run import load_run
    from biomedseg.inference.settings import InferenceSettings

    run = make_run(tmp_path / "run", overlap=0.5, working_scale=0.5)
    reads = []
    read_json = folder._read_json
    monkeypatch.setattr(folder, "_read_json", lambda path: reads.append(path.name) or read_json(path))
    loaded = load_run(run, device="cpu")
    assert reads.count("run.json") == 1  # open_run and load_run share one read
    s = loaded.settings
    assert isinstance(s, InferenceSettings) and not hasattr(loaded, "config")
    # tiles per forward pass: the inference rule applied once (half the training batch of 6)
    assert (s.patch_size, s.overlap, s.batch_size, s.working_scale, s.architecture) == (64, 0.5, 3, 0.5, "unet")
    assert loaded.tile_size == 128 and loaded.predictor().batch_size == 3


def test_exported_settings_take_the_written_batch_size(tmp_path):
    from biomedseg.inference.exported.format import exported_run

    doc = {
        "network": {"architecture": "unet"},
        "input": {"channels": 1},
        "normalization": {"mean": [0.0], "std": [1.0]},
        "sliding_window": {"patch_size": 96, "overlap": 0.25, "batch_size": 3},
        "classes": {"names": ["bg", "fg"], "background": 0, "palette": {"values": [[0], [1]]}},
        "dataset": {"n_classes": 2},
        "source": {"train_batch_size": 10},
    }  # written by older versions: not inverted any more
    loaded = exported_run(doc, torch.nn.Identity(), tmp_path / "m.pt", torch.device("cpu"), "torch")
    assert loaded.settings.batch_size == 3 and loaded.predictor().batch_size == 3
    assert loaded.tile_size == 96 and loaded.channels_last is False


def test_keywords_and_options_object_give_the_same_call(tmp_path):
    from biomedseg import predict
    from biomedseg.inference.predict.options import PredictOptions

    run = make_run(tmp_path / "run")
    images = write_pngs(tmp_path / "images", ["a", "b"])
    s1 = predict(run, [images], tmp_path / "kw", overlays=False, quiet=True, threads=1)
    s2 = predict(run, [images], tmp_path / "obj", PredictOptions(overlays=False, quiet=True, threads=1))
    assert len(s1.done) == len(s2.done) == 2 and not (tmp_path / "kw" / "a_overlay.png").exists()
    for name in ("a", "b"):
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "kw" / f"{name}.png")),
            np.asarray(Image.open(tmp_path / "obj" / f"{name}.png")),
        )
    with pytest.raises(TypeError, match="overlay"):
        predict(run, [images], tmp_path / "bad", overlay=False)
    assert PredictOptions.of(PredictOptions(tta="flips"), quiet=True).tta == "flips"


def test_distributed_prediction_defaults_to_device_auto():
    import inspect

    from biomedseg.inference.predict.distributed import predict_distributed
    from biomedseg.inference.predict.options import PredictOptions

    assert "device" not in inspect.signature(predict_distributed).parameters  # one default: the options'
    assert PredictOptions().device == "auto"


def test_threads_are_the_machines_cores_not_the_training_configs(tmp_path, restore_threads):
    from biomedseg import predict

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs 2 or more cores to tell the machine's count from the run's num_threads=1")
    run = make_run(tmp_path / "run")  # trained with num_threads: 1
    images = write_pngs(tmp_path / "images", ["a"])
    torch.set_num_threads(1)
    predict(run, [images], tmp_path / "out", overlays=False, quiet=True)
    assert torch.get_num_threads() == cores
    predict(run, [images], tmp_path / "out", overlays=False, quiet=True, overwrite=True, threads=1)
    assert torch.get_num_threads() == 1


class FailsOnBrightTiles(torch.nn.Module):
    """The network, raising the allocator's RuntimeError on tiles whose every pixel is bright."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if float(x.amin()) > 2.0:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 68719476736 bytes.")
        return self.net(x)


def test_any_failed_input_is_reported_in_one_line_and_the_batch_goes_on(tmp_path, monkeypatch, caplog, restore_threads):
    import biomedseg.io.mask_encoding as mask_encoding
    from biomedseg import predict
    from biomedseg.inference.run import load_run

    loaded = load_run(make_run(tmp_path / "run"), device="cpu")
    loaded = dataclasses.replace(loaded, model=FailsOnBrightTiles(loaded.model))
    images = write_pngs(tmp_path / "images", ["a", "nospace", "z"])
    write_pngs(images, ["bright"], value=255)  # normalised (255 - 100) / 50 > 2 everywhere
    write_mask = mask_encoding.write_mask

    def disk_full(path, mask, encoding):  # the real writer, failing on one file halfway through
        if "nospace" not in str(path):
            return write_mask(path, mask, encoding)
        with mask_encoding.atomic_path(path) as tmp:
            tmp.write_bytes(b"\x89PNG partial")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(mask_encoding, "write_mask", disk_full)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG, logger="biomedseg"):
        s = predict(loaded, [images], out, quiet=True, threads=1)
    assert sorted(p.name for p in s.done) == ["a.png", "z.png"]
    failed = {p.name: message for p, message in s.failed}
    assert sorted(failed) == ["bright.png", "nospace.png"]
    assert "RuntimeError" in failed["bright.png"] and "not enough memory" in failed["bright.png"]
    assert "OSError" in failed["nospace.png"] and "No space left" in failed["nospace.png"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info is None and "\n" not in r.getMessage() for r in errors)
    assert all(str(images) in r.getMessage() for r in errors)  # each names its file
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)  # the traceback, at debug
    # nothing of the failed inputs is left: no mask, no temporary file, no overlay written before the failure
    # (and predictions.csv: one row per input, the failed ones with their error)
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png",
        "a_overlay.png",
        "predictions.csv",
        "z.png",
        "z_overlay.png",
    ]


def test_a_truncated_uncompressed_tiff_is_reported_and_skipped(tmp_path, restore_threads):
    import tifffile

    from biomedseg import predict
    from biomedseg.inference.predict.outputs import STREAM_ABOVE_PIXELS

    run = make_run(tmp_path / "run")
    images = write_pngs(tmp_path / "images", ["good"])
    side = int(STREAM_ABOVE_PIXELS**0.5) + 16  # streamed, rows read by file offset: the read fails there
    bad = images / "cut.tif"
    tifffile.imwrite(bad, np.full((side, side), 7, np.uint8))  # uncompressed, contiguous
    with open(bad, "r+b") as f:
        f.truncate(1024)  # the header and the first rows
    s = predict(run, [images], tmp_path / "out", overlays=False, quiet=True, threads=1, compile="off")
    assert [p.name for p in s.done] == ["good.png"]
    assert [p.name for p, _ in s.failed] == ["cut.tif"] and str(bad) in s.failed[0][1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png", "predictions.csv"]


@pytest.mark.slow
def test_cli_threads_option(tmp_path):
    from test_cli import run_cli

    run = make_run(tmp_path / "run")
    images = write_pngs(tmp_path / "images", ["a"])
    bad = run_cli("predict", run, images, "--out", tmp_path / "out", "--threads", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("--threads 0: must be >= 1")
    ok = run_cli("predict", run, images, "--out", tmp_path / "out", "--threads", "1", "--no-overlays", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert "1 predicted" in ok.stdout and (tmp_path / "out" / "a.png").is_file()


def test_channels_last_default_for_cpu_prediction_follows_the_precision(tmp_path):
    from biomedseg.inference.run import load_run
    from biomedseg.runtime.device import inference_channels_last

    cpu = torch.device("cpu")
    # measured (benchmarks/RESULTS.md): faster in fp32 (AVX-512 and AVX2 kernels), not in native bf16
    assert inference_channels_last(None, cpu, "fp32") is True
    assert inference_channels_last(None, cpu, "bf16") is False
    assert inference_channels_last(None, torch.device("cuda"), "bf16") is True
    assert inference_channels_last(False, cpu, "fp32") is False and inference_channels_last(True, cpu, "bf16")
    run = make_run(tmp_path / "run")  # precision fp32, channels_last unset
    loaded = load_run(run, device="cpu")
    assert loaded.precision == "fp32" and loaded.channels_last and loaded.predictor().channels_last
    conv = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not load_run(run, device="cpu", precision="bf16").channels_last
    assert not load_run(make_run(tmp_path / "off", channels_last=False), device="cpu").channels_last
