"""End-to-end: train -> evaluate -> predict on tiny synthetic data; resume; determinism."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.inference.predict.batch import predict
from biomedseg.runs import load_checkpoint
from biomedseg.training.api import train
from biomedseg.workflows.evaluation import evaluate
from conftest import TINY


def test_run_folder_layout(trained_run):
    for name in (
        "config.yaml",
        "plan.yaml",
        "dataset.json",
        "metrics.csv",
        "curves.png",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (trained_run / name).is_file(), name
    assert any((trained_run / "tensorboard").iterdir())
    info = json.loads((trained_run / "dataset.json").read_text())
    assert info["classes"] == ["background", "cell", "filament"]
    assert info["background"] == 0
    assert len(info["normalization"]["mean"]) == info["channels"] == 1
    assert set(info["split"]) >= {"train", "val", "test"}
    assert not set(info["split"]["train"]) & set(info["split"]["val"])
    rows = list(csv.DictReader(open(trained_run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    # the stored config is complete: every default written out
    cfg = (trained_run / "config.yaml").read_text()
    for key in ("lr:", "optimizer:", "loss:", "patch_size:", "seed:", "augment:"):
        assert key in cfg


def test_checkpoints_load_weights_only(trained_run):
    ck = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    assert ck["epoch"] == 2 and ck["iteration"] == 2 * TINY["iterations_per_epoch"]
    assert all(isinstance(v, torch.Tensor) for v in ck["model"].values())


def test_evaluate_writes_metrics(trained_run, synthetic_data, tmp_path):
    m = evaluate(trained_run, synthetic_data, tmp_path / "eval", split="test", quiet=True)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("dice", "iou", "precision", "recall", "f1", "pixel_accuracy", "image_dice", "per_class"):
        assert key in saved
    assert set(saved["per_class"]) == {"background", "cell", "filament"}
    assert {"fp", "fn"} <= set(saved["per_class"]["cell"])
    assert saved["n_images"] == 4
    assert abs(saved["dice"] - m["dice"]) < 1e-9
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image.csv")))
    assert len(rows) == 4
    overlays = sorted((tmp_path / "eval" / "overlays").glob("*.png"))
    assert len(overlays) == 4
    assert (tmp_path / "eval" / "report.html").is_file()


def test_predict_folder_and_bad_file(trained_run, synthetic_data, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sorted((synthetic_data / "images").glob("*.png"))[:2]:
        (inputs / p.name).write_bytes(p.read_bytes())
    big = np.random.default_rng(0).integers(0, 255, (150, 211), dtype=np.uint8)  # other size than training
    Image.fromarray(big).save(inputs / "big.png")
    (inputs / "broken.png").write_text("not an image")
    s = predict(trained_run, [str(inputs)], tmp_path / "out", quiet=True)
    assert len(s.done) == 3 and len(s.failed) == 1
    assert "broken.png" in s.failed[0][1]
    mask = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    assert mask.shape == (150, 211) and mask.dtype == np.uint8 and mask.max() <= 2
    assert (tmp_path / "out" / "big_overlay.png").is_file()
    # a second call skips what is done
    s2 = predict(trained_run, [str(inputs)], tmp_path / "out", quiet=True)
    assert len(s2.skipped) == 3 and not s2.done


@pytest.mark.slow
def test_resume_continues_from_last(synthetic_data, tmp_path):
    run = train(synthetic_data, tmp_path / "r", epochs=1, seed=3, quiet=True, **TINY)
    with pytest.raises(UserError, match="already holds a run"):
        train(synthetic_data, run, epochs=2, seed=3, quiet=True, **TINY)
    train(synthetic_data, run, epochs=2, resume=True, quiet=True)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["epoch"] == 2
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


@pytest.mark.slow
def test_resume_equals_uninterrupted(synthetic_data, tmp_path, monkeypatch):
    """A run interrupted after epoch 1 and resumed ends with the weights of an uninterrupted run."""
    from biomedseg.training.trainer import Trainer

    full = train(synthetic_data, tmp_path / "full", epochs=2, seed=5, quiet=True, **TINY)
    original = Trainer.validate
    calls = {"n": 0}

    def crash_on_second(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "validate", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_data, tmp_path / "part", epochs=2, seed=5, quiet=True, **TINY)
    monkeypatch.setattr(Trainer, "validate", original)
    assert load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["epoch"] == 1
    train(synthetic_data, tmp_path / "part", resume=True, quiet=True)
    a = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["model"]
    diffs = [float((a[k].float() - b[k].float()).abs().max()) for k in a]
    assert max(diffs) < 1e-5


@pytest.mark.slow
def test_same_seed_same_weights(synthetic_data, tmp_path):
    a = train(synthetic_data, tmp_path / "a", epochs=1, seed=7, quiet=True, **TINY)
    b = train(synthetic_data, tmp_path / "b", epochs=1, seed=7, quiet=True, **TINY)
    wa = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _fake_clock(monkeypatch, step_seconds: float, validation_seconds: float = 0.0) -> list[float]:
    """A clock for the trainer on which each training step takes ``step_seconds``, each validation
    ``validation_seconds`` and nothing else any time (wall-clock behaviour: benchmarks/time_budget.py)."""
    import types

    import biomedseg.training.loop_state as loop_state_module
    import biomedseg.training.trainer as trainer_module
    from biomedseg.training.trainer import Trainer

    clock = [0.0]
    real_step, real_validate = Trainer.train_step, Trainer.validate

    def timed_step(self, x, y):
        clock[0] += step_seconds
        return real_step(self, x, y)

    def timed_validate(self, *args, **kwargs):
        clock[0] += validation_seconds
        return real_validate(self, *args, **kwargs)

    fake_time = types.SimpleNamespace(perf_counter=lambda: clock[0])
    monkeypatch.setattr(trainer_module, "time", fake_time)
    monkeypatch.setattr(loop_state_module, "time", fake_time)  # the loop's Clock
    monkeypatch.setattr(Trainer, "train_step", timed_step)
    monkeypatch.setattr(Trainer, "validate", timed_validate)
    return clock


@pytest.mark.slow
def test_time_budget_counts_validation(synthetic_data, tmp_path, monkeypatch):
    """Steps of 1 s, validations of 3 s, a 20 s budget, 6 steps per epoch: epoch 1 ends at 9 s; in
    epoch 2 the step after 14 s would leave no room for the next step (counted twice) and the final
    validation (1.5x the last one): 14 + 2 + 4.5 > 20. So 11 steps, 2 epochs, 17 s: within budget."""
    _fake_clock(monkeypatch, 1.0, 3.0)
    run = train(synthetic_data, tmp_path / "t", time_budget="20s", seed=0, quiet=True, **TINY)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ck["iteration"], ck["epoch"], ck["elapsed"]) == (11, 2, 17.0)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [float(r["seconds"]) for r in rows] == [9.0, 17.0] and all(r["val_dice"] != "" for r in rows)


@pytest.mark.slow
def test_time_budget_stops_before_the_next_step_would_overrun_it(synthetic_data, tmp_path, monkeypatch):
    """On a clock where each training step takes 1 s and nothing else takes time, a 6 s budget
    stops once one more step (counted twice, for safety) would pass it: after 4 steps, in epoch 1."""
    _fake_clock(monkeypatch, 1.0)
    run = train(synthetic_data, tmp_path / "t", time_budget="6s", seed=0, quiet=True, **TINY)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ck["iteration"], ck["epoch"], ck["elapsed"]) == (4, 1, 4.0)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["val_dice"] != ""  # the run ends with a validation


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(synthetic_data, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # with an image-level head: its logits are set as a module attribute inside the compiled forward
    tiny = {**TINY, "model_kwargs": {**TINY["model_kwargs"], "classifier_head": True}}
    eager = train(synthetic_data, tmp_path / "eager", epochs=1, seed=4, quiet=True, **tiny)
    compiled = train(synthetic_data, tmp_path / "compiled", epochs=1, seed=4, quiet=True, compile="aot_eager", **tiny)
    assert counters["stats"]["unique_graphs"] > 0  # the steps really ran through torch.compile
    we = load_checkpoint(eager / "checkpoints" / "last.pt")["model"]
    wc = load_checkpoint(compiled / "checkpoints" / "last.pt")["model"]
    assert list(wc) == list(we)  # no "_orig_mod." prefix: the checkpoint loads into a plain model
    assert max(float((we[k].float() - wc[k].float()).abs().max()) for k in we) < 1e-4
    losses = [
        [float(r["train_cls_loss"]) for r in csv.DictReader(open(run / "metrics.csv"))] for run in (eager, compiled)
    ]
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)  # the head's loss reached the compiled step
    plan = yaml.safe_load((compiled / "plan.yaml").read_text())
    assert plan["compile"]["value"] == "aot_eager" and plan["compile"]["reason"] == "set by the user"
    assert plan["deterministic"]["value"] is True  # CPU default: reproducible


@pytest.mark.slow
def test_training_goes_on_uncompiled_when_compiling_fails(synthetic_data, tmp_path, caplog):
    from torch._dynamo import register_backend

    @register_backend
    def biomedseg_test_failing_backend(gm, example_inputs):  # what a missing C++ compiler looks like
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    torch._dynamo.reset()
    eager = train(synthetic_data, tmp_path / "eager", epochs=1, seed=4, quiet=True, **TINY)
    with caplog.at_level("WARNING", logger="biomedseg"):
        run = train(
            synthetic_data,
            tmp_path / "fallback",
            epochs=1,
            seed=4,
            quiet=True,
            compile="biomedseg_test_failing_backend",
            **TINY,
        )
    assert any(
        "torch.compile failed" in r.getMessage() and "InvalidCxxCompiler" in r.getMessage() for r in caplog.records
    )
    we = load_checkpoint(eager / "checkpoints" / "last.pt")["model"]
    wf = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert max(float((we[k].float() - wf[k].float()).abs().max()) for k in we) < 1e-5  # the same steps, eagerly


@pytest.mark.slow
def test_compile_false_from_the_user_plans_as_without_a_compiler(synthetic_data, tmp_path, monkeypatch):
    import biomedseg.planning.planner as planner
    import biomedseg.runtime.device

    monkeypatch.setattr(biomedseg.runtime.device, "cpp_compiler_available", lambda: True)
    monkeypatch.setattr(planner, "COMPILE_MIN_BUDGET_S", 1)  # a "long" budget the test can afford
    monkeypatch.setattr(planner, "FULL_RES_MIN_BUDGET_S", 1)
    monkeypatch.setattr(planner, "THIN_STRUCTURE_WIDTH", 1e9)  # every class counts as thin
    run = train(synthetic_data, tmp_path / "off", time_budget="3s", seed=0, quiet=True, compile=False, **TINY)
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["compile"] == {"value": False, "reason": "set by the user"}
    assert plan["model_kwargs.full_res_channels"]["value"] == 0  # no eager full-resolution level on CPU
    assert yaml.safe_load((run / "config.yaml").read_text())["model_kwargs"]["full_res_channels"] == 0


def test_determinism_is_the_default_on_cpu_only():
    from biomedseg.training.stages import resolve_determinism, seed_everything

    assert resolve_determinism(None, "cpu") is True
    assert resolve_determinism(None, "cuda") is False  # cuDNN benchmark mode on GPUs
    assert resolve_determinism(True, "cuda") is True
    try:
        seed_everything(0, deterministic=False)
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        seed_everything(0, deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    finally:
        seed_everything(0, deterministic=True)


def test_prefetcher_yields_tensors_in_sampler_order(synthetic_data):
    from biomedseg.training.loader import Prefetcher

    class Counting:  # a sampler stand-in: batch i is filled with the value i
        def __init__(self):
            self.i = 0

        def batch(self, n):
            self.i += 1
            return np.full((n, 1, 4, 4), self.i, np.float32), np.full((n, 4, 4), self.i, np.int64)

    pf = Prefetcher(Counting(), 3)
    try:
        got = [pf.next() for _ in range(4)]
    finally:
        pf.close()
    assert [int(x[0, 0, 0, 0]) for x, _ in got] == [1, 2, 3, 4]
    x, y = got[0]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, 1, 4, 4)
    assert y.dtype == torch.int64 and not x.is_pinned()  # pinning only when asked (CUDA runs)


@pytest.mark.slow
def test_16_bit_images_are_clipped_at_percentiles_then_z_scored(synthetic_data, tmp_path):
    import shutil

    from biomedseg.io import read_image
    from biomedseg.io.writers import write_tiff

    deep = tmp_path / "deep"
    shutil.copytree(synthetic_data / "masks", deep / "masks")
    if (synthetic_data / "dataset.json").is_file():
        shutil.copy(synthetic_data / "dataset.json", deep / "dataset.json")
    for i, f in enumerate(sorted((synthetic_data / "images").iterdir())):
        img = read_image(f).astype(np.uint16) * 200 + 1000  # 16-bit, with one saturated pixel each
        img[i % img.shape[0], 0] = 65535
        write_tiff(deep / "images" / f"{f.stem}.tif", img)
    run = train(deep, tmp_path / "run", epochs=1, seed=0, quiet=True, **TINY)
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["normalization"]["value"] == "clip_zscore"
    norm = json.loads((run / "dataset.json").read_text())["normalization"]
    assert norm["clip"]["high"][0] < 65535 and norm["clip"]["low"][0] >= 1000
    s = predict(run, [str(deep / "images")], tmp_path / "pred", overlays=False, quiet=True)
    assert len(s.done) == len(list((deep / "images").iterdir())) and not s.failed  # the run's clip applies
