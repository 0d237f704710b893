"""Fault injection: crashes, divergence, impossible options and unwritable outputs never pass silently.

Each fault ends in a finished run (kill -9 then resume/rerun), a recovered run with a warning, or
exit code 2 with one line and no traceback; nothing half-written is left behind and the previous
good file is kept. CPU only, tiny synthetic data.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import biomedseg.io.writers as writers
from biomedseg.runs import load_checkpoint
from conftest import TINY

TINY_SET = [x for k, v in TINY.items() for x in ("--set", f"{k}={json.dumps(v)}")]


def cli_here(monkeypatch, capsys, *args) -> tuple[int, str]:
    """``biomedseg ARGS`` in this process (fast: torch is imported once): exit code and stderr."""
    from biomedseg.cli import main

    monkeypatch.setattr(sys, "argv", ["biomedseg", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def finite_checkpoint(path: Path) -> dict:
    ck = load_checkpoint(path)
    assert all(bool(torch.isfinite(t).all()) for t in ck["model"].values() if t.is_floating_point()), path
    return ck


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the process ended before the fault could be injected"
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# ---------------------------------------------------------------- kill -9, then resume / rerun


@pytest.mark.slow
def test_kill_9_during_training_then_resume(synthetic_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "biomedseg.cli",
            "train",
            str(synthetic_data),
            "--out",
            str(run),
            "--epochs",
            "2",
            "--seed",
            "2",
            "--quiet",
            *TINY_SET,
        ],
        stdout=log,
        stderr=log,
    )
    wait_for(lambda: (run / "checkpoints" / "last.pt").is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    assert killed_at == 1
    code, err = cli_here(monkeypatch, capsys, "train", synthetic_data, "--out", run, "--resume", "--quiet")
    assert code == 0, err[-2000:]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 2]  # one row per epoch: none lost, none doubled
    assert finite_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    finite_checkpoint(run / "checkpoints" / "best.pt")


def test_kill_9_during_folder_prediction_then_rerun(trained_run, tmp_path, monkeypatch, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    n = 6
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (192, 192), dtype=np.uint8)).save(inputs / f"im{i:02d}.png")
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "biomedseg.cli",
        "predict",
        str(trained_run),
        str(inputs),
        "--out",
        str(out),
        "--quiet",
        "--no-overlays",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: out.is_dir() and any(out.glob("im*.png")), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(list(out.glob("im*.png"))) < n
    code, err = cli_here(
        monkeypatch, capsys, "predict", trained_run, inputs, "--out", out, "--quiet", "--no-overlays", "--device", "cpu"
    )
    assert code == 0, err[-2000:]
    masks = sorted(out.glob("im*.png"))
    assert len(masks) == n
    for m in masks:  # every mask whole: none half-written by the killed process
        a = np.asarray(Image.open(m))
        assert a.shape == (192, 192) and a.max() <= 2


# ---------------------------------------------------------------- divergence


def nan_loss_on(monkeypatch, steps) -> None:
    """Test hook: the training loss of the given step numbers (counted from 1 over the whole run) is NaN."""
    from biomedseg.training.trainer import Trainer

    original, count = Trainer._loss, {"n": 0}

    def patched(self, x, y):
        loss, terms = original(self, x, y)
        count["n"] += 1
        return (loss * float("nan"), terms) if steps(count["n"]) else (loss, terms)

    monkeypatch.setattr(Trainer, "_loss", patched)


@pytest.mark.slow
def test_a_few_non_finite_steps_are_skipped_with_a_warning(synthetic_data, tmp_path, monkeypatch, caplog):
    from biomedseg.training.api import train

    nan_loss_on(monkeypatch, lambda i: i in (3, 4))
    run = train(synthetic_data, tmp_path / "run", epochs=2, seed=0, quiet=True, **TINY)
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warnings) == 2
    assert warnings[0].startswith("epoch 1, step 3:") and warnings[1].startswith("epoch 1, step 4:")
    assert "learning rate lowered" in warnings[0]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert rows[0]["skipped_steps"] == "2" and np.isfinite(float(rows[0]["train_loss"]))
    last = finite_checkpoint(run / "checkpoints" / "last.pt")
    assert last["schedule"]["backoff"] == pytest.approx(0.25)  # halved twice, and kept for --resume
    finite_checkpoint(run / "checkpoints" / "best.pt")


@pytest.mark.slow
def test_divergence_stops_with_exit_2_and_keeps_the_last_good_checkpoint(synthetic_data, tmp_path, monkeypatch):
    from biomedseg.training.api import train
    from biomedseg.training.trainer import MAX_NONFINITE_STEPS, TrainingDiverged

    ipe = TINY["iterations_per_epoch"]
    nan_loss_on(monkeypatch, lambda i: i > ipe)  # every step of epoch 2
    with pytest.raises(TrainingDiverged) as info:
        train(synthetic_data, tmp_path / "run", epochs=3, seed=0, quiet=True, **TINY)
    msg = str(info.value)
    assert f"epoch 2, step {MAX_NONFINITE_STEPS}" in msg and "--lr" in msg
    assert "last.pt of epoch 1" in msg and "\n" not in msg
    assert info.value.exit_code == 2
    for name in ("best.pt", "last.pt"):
        assert finite_checkpoint(tmp_path / "run" / "checkpoints" / name)["epoch"] == 1


@pytest.mark.slow
def test_non_finite_weights_are_never_checkpointed(synthetic_data, tmp_path, monkeypatch):
    from biomedseg.training.api import train
    from biomedseg.training.trainer import Trainer, TrainingDiverged

    original = Trainer._epoch_row

    def poison_epoch_2(self, state, ep, clock):
        row = original(self, state, ep, clock)
        if state.epoch == 2:  # after validating: the weights turn infinite just before the checkpoints
            with torch.no_grad():
                next(self.net.parameters()).fill_(float("inf"))
        return row

    monkeypatch.setattr(Trainer, "_epoch_row", poison_epoch_2)
    with pytest.raises(TrainingDiverged, match="weights became non-finite in epoch 2"):
        train(synthetic_data, tmp_path / "run", epochs=3, seed=0, quiet=True, **TINY)
    for name in ("best.pt", "last.pt"):
        assert finite_checkpoint(tmp_path / "run" / "checkpoints" / name)["epoch"] == 1


def test_absurd_learning_rate_from_the_command_line(synthetic_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, err = cli_here(
        monkeypatch, capsys, "train", synthetic_data, "--out", run, "--epochs", "2", "--lr", "1e9", "--quiet", *TINY_SET
    )
    assert_one_line(code, err, "training diverged", "--lr")
    for ck in (run / "checkpoints").glob("*.pt"):
        finite_checkpoint(ck)


def _tiny_trainer(precision="fp32"):
    from biomedseg.losses.build import build_loss
    from biomedseg.models import create_model
    from biomedseg.runs.config import TrainConfig
    from biomedseg.training.optim import ProgressSchedule
    from biomedseg.training.trainer import Trainer

    torch.manual_seed(0)
    model = create_model("unet", 1, 2, **TINY["model_kwargs"])
    cfg = TrainConfig(device="cpu", channels_last=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return Trainer(
        cfg,
        model,
        build_loss("dice+ce", 2, None),
        opt,
        ProgressSchedule(opt, "poly", 1e-3),
        None,
        [],
        None,
        2,
        ["background", "fg"],
        0,
        ".",
        torch.device("cpu"),
        precision,
        1,
        quiet=True,
    )


def _batch():
    g = torch.Generator().manual_seed(1)
    y = torch.zeros(2, 32, 32, dtype=torch.int64)
    y[:, 8:20, 8:20] = 1
    return torch.randn(2, 1, 32, 32, generator=g), y


def test_a_non_finite_step_leaves_the_weights_alone(monkeypatch):
    trainer = _tiny_trainer()
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    nan_loss_on(monkeypatch, lambda i: True)
    trainer.train_step(*_batch())
    assert not trainer.step_finite
    after = trainer.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update, not even weight decay


@pytest.mark.parametrize("scaler", [False, True])
def test_infinite_gradients_of_a_finite_loss(scaler):
    """fp32: a skipped (non-finite) step; under a GradScaler: the scaler's own skip, not divergence."""
    trainer = _tiny_trainer()
    if scaler:
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    next(trainer.net.parameters()).register_hook(lambda g: torch.full_like(g, float("inf")))  # overflow
    loss = trainer.train_step(*_batch())
    assert np.isfinite(loss)
    assert trainer.step_finite is scaler
    if scaler:
        assert trainer.scaler.get_scale() == 512.0  # the scaler reacted by itself
    assert all(torch.equal(before[k], v) for k, v in trainer.net.state_dict().items())  # no update either way


@pytest.mark.slow
def test_ranks_agree_on_a_flag_raised_by_one(tmp_path):
    """DDP: ``any_rank`` (all-reduce) makes every rank skip when one rank's loss is not finite."""
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch built without gloo")
    script = (
        "import sys, torch.distributed as dist\n"
        "from biomedseg.training.distributed import DistInfo, any_rank\n"
        "r = int(sys.argv[1])\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path}/store', rank=r, world_size=2)\n"
        "print(any_rank(r == 1, DistInfo(r, 2)), any_rank(False, DistInfo(r, 2)))\n"
        "dist.destroy_process_group()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(r)], stdout=subprocess.PIPE, text=True) for r in (0, 1)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert outs == [["True", "False"], ["True", "False"]]


def test_restore_brings_back_model_optimizer_schedule_scaler_and_rng():
    a = _tiny_trainer()
    a.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    a.train_step(*_batch())
    a.schedule.back_off(0.5)
    from biomedseg.training.trainer import TrainState

    ck = a.checkpoint_state(TrainState(epoch=3, iteration=30, elapsed=12.5, best_score=0.4, best_epoch=2))
    rng = torch.get_rng_state()
    torch.manual_seed(99)
    b = _tiny_trainer()
    b.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    state = b.restore(ck)
    assert (state.epoch, state.iteration, state.elapsed, state.best_score, state.best_epoch) == (3, 30, 12.5, 0.4, 2)
    assert all(torch.equal(v, b.net.state_dict()[k]) for k, v in a.net.state_dict().items())
    assert b.optimizer.state_dict()["state"][0]["step"] == a.optimizer.state_dict()["state"][0]["step"]
    assert b.scaler.get_scale() == a.scaler.get_scale() == 1024.0
    assert b.schedule.backoff == 0.5
    assert torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------- impossible option values

REFUSED = [
    (["train", "{data}", "--out", "{tmp}/r", "--epochs", "-1"], "epochs"),
    (["train", "{data}", "--out", "{tmp}/r", "--epochs", "0"], "epochs"),
    (["train", "{data}", "--out", "{tmp}/r", "--batch-size", "0"], "batch_size"),
    (["train", "{data}", "--out", "{tmp}/r", "--patch-size", "8"], "patch_size"),
    (["train", "{data}", "--out", "{tmp}/r", "--patch-size", "100000"], "patch_size"),
    (["train", "{data}", "--out", "{tmp}/r", "--lr", "0"], "lr"),
    (["train", "{data}", "--out", "{tmp}/r", "--lr", "nan"], "lr"),
    (["train", "{data}", "--out", "{tmp}/r", "--val-fraction", "1"], "val_fraction"),
    (["train", "{data}", "--out", "{tmp}/r", "--time-budget", "0s"], "time_budget"),
    (["train", "{data}", "--out", "{tmp}/r", "--seed", "-1"], "seed"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "overlap=1"], "overlap"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "warmup_fraction=-0.1"], "warmup_fraction"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "fg_oversample=1.5"], "fg_oversample"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "grad_clip=0"], "grad_clip"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "weight_decay=-1"], "weight_decay"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "iterations_per_epoch=0"], "iterations_per_epoch"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "val_every=0"], "val_every"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "num_threads=0"], "num_threads"),
    (["train", "{data}", "--out", "{tmp}/r", "--set", "classifier_loss_weight=-1"], "classifier_loss_weight"),
    (["split", "{data}", "--test-fraction", "1"], "--test-fraction"),
    (["split", "{data}", "--val-fraction", "-0.1"], "--val-fraction"),
    (["tile", "{data}", "--out", "{tmp}/t", "--stride", "0"], "--stride"),
    (["tile", "{data}", "--out", "{tmp}/t", "--keep-empty", "2"], "--keep-empty"),
    (["tile", "{data}", "--out", "{tmp}/t", "--seed", "-1"], "--seed"),
    (["predict", "{tmp}/run", "{data}/images", "--out", "{tmp}/p", "--batch-size", "0"], "--batch-size"),
    (["predict", "{tmp}/run", "{data}/images", "--out", "{tmp}/p", "--level", "-1"], "--level"),
    (["augment-preview", "{data}", "-n", "0", "--out", "{tmp}/a.png"], "--n"),
    (["augment-preview", "{data}", "--patch-size", "8", "--out", "{tmp}/a.png"], "--patch-size"),
    (["plan", "{data}", "--epochs", "0", "--out", "{tmp}/plan.yaml"], "epochs"),
    (["plan", "{data}", "--time-budget", "0", "--out", "{tmp}/plan.yaml"], "time_budget"),
]


@pytest.mark.parametrize("args,needle", REFUSED, ids=[f"{a[0]} {' '.join(a[-2:])}" for a, _ in REFUSED])
def test_impossible_option_values_are_refused(args, needle, synthetic_data, tmp_path, monkeypatch, capsys):
    args = [a.format(data=synthetic_data, tmp=tmp_path) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line(*cli_here(monkeypatch, capsys, *args), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # refused before writing anything


# ---------------------------------------------------------------- unwritable outputs


def _occupied(tmp: Path) -> Path:
    f = tmp / "some_file"
    f.write_text("keep me")
    return f


UNWRITABLE = [
    ["predict", "{tmp}/run", "{data}/images/syn_000.png", "--out", "{file}"],
    ["train", "{data}", "--out", "{file}", "--epochs", "1"],
    ["evaluate", "{tmp}/run", "{data}", "--out", "{file}"],
    ["audit", "{data}", "--out", "{file}"],
    ["tile", "{data}", "--out", "{file}"],
    ["demo", "--out", "{file}"],
    ["predict", "{tmp}/run", "{data}/images", "--out", "{file}/sub"],  # a file among the parents
    ["plan", "{data}", "--out", "{tmp}"],  # a folder where a file is needed
    ["augment-preview", "{data}", "--out", "{tmp}"],
]


@pytest.mark.parametrize("args", UNWRITABLE, ids=[" ".join(a[:1] + a[-2:]) for a in UNWRITABLE])
def test_output_path_that_cannot_be_a_folder_or_file(args, synthetic_data, tmp_path, monkeypatch, capsys):
    f = _occupied(tmp_path)
    args = [a.format(data=synthetic_data, tmp=tmp_path, file=f) for a in args]
    assert_one_line(*cli_here(monkeypatch, capsys, *args), str(tmp_path))  # names the path
    assert f.read_text() == "keep me"


def _refused_as_read_only(folder: Path, data: Path, monkeypatch, capsys) -> None:
    for args in (
        ["train", data, "--out", folder / "run", "--epochs", "1"],
        ["predict", folder / "run", data / "images", "--out", folder / "pred"],
        ["split", folder],
    ):
        assert_one_line(*cli_here(monkeypatch, capsys, *args), "not writable", str(folder))
    assert not (folder / "run").exists() and not (folder / "pred").exists()


def test_read_only_folder_is_refused(synthetic_data, tmp_path, monkeypatch, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop writes (the simulated case below covers it)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _refused_as_read_only(ro, synthetic_data, monkeypatch, capsys)
    finally:
        ro.chmod(0o755)


def test_read_only_folder_is_refused_simulated(synthetic_data, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: not (Path(p) == ro and mode & os.W_OK) and real_access(p, mode, **kw)
    )
    _refused_as_read_only(ro, synthetic_data, monkeypatch, capsys)


def _disk_full_after(monkeypatch, n_bytes: int) -> None:
    """Every file the atomic writers open takes ``n_bytes`` and then fails with ENOSPC."""

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[:n_bytes])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(writers, "open", lambda *a, **kw: FullDisk(open(*a, **kw)), raising=False)


def test_disk_full_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    writers.write_json(target, {"dice": 0.9})
    before = target.read_bytes()
    _disk_full_after(monkeypatch, 5)
    with pytest.raises(OSError) as info:
        writers.write_json(target, {"dice": 0.1, "long": "x" * 1000})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)  # names the file, not the temp
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_disk_full_during_a_command_is_one_line(synthetic_data, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    before = (data / "dataset.json").read_bytes()
    _disk_full_after(monkeypatch, 5)
    line = assert_one_line(*cli_here(monkeypatch, capsys, "split", data, "--quiet"), "No space left on device")
    assert str(data) in line
    assert (data / "dataset.json").read_bytes() == before
    assert leftovers(data) == []


@pytest.mark.slow
def test_disk_full_while_checkpointing(synthetic_data, tmp_path, monkeypatch):
    from biomedseg.training.api import train

    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **kw):  # torch's writer reports a failed write as RuntimeError
        calls["n"] += 1
        if calls["n"] <= 2:  # epoch 1: best.pt and last.pt
            return real_save(obj, f, *a, **kw)
        Path(f).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as info:
        train(synthetic_data, tmp_path / "run", epochs=2, seed=0, quiet=True, **TINY)
    assert info.value.filename.endswith(".pt") and "cannot write checkpoint" in str(info.value)
    for name in ("best.pt", "last.pt"):
        assert finite_checkpoint(tmp_path / "run" / "checkpoints" / name)["epoch"] == 1
    assert leftovers(tmp_path / "run") == []
