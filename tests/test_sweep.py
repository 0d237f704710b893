"""``biomedseg sweep``: --param forms, grid and TPE studies, pruning, resuming from the SQLite study,
the table and the best config."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from biomedseg.core.errors import UserError
from biomedseg.runs.config import build_config
from biomedseg.runs.sweep import SweepPaths
from biomedseg.sweeps.space import check_params, grid_of, parse_param, parse_params
from conftest import TINY
from test_cli import assert_user_error, run_cli

optuna = pytest.importorskip("optuna")

from biomedseg.sweeps import run as sweeps  # noqa: E402  (after the skip: sweeps needs optuna at run time)
from biomedseg.sweeps import study as sweep_study  # noqa: E402

# one short epoch per trial, no pruning unless a test asks for it
FAST = {**TINY, "epochs": 1, "seed": 0, "quiet": True}
# the same on the command line
FAST_ARGS = [
    "--epochs",
    "1",
    "--quiet",
    *(
        a
        for k, v in (
            ("model_kwargs.depth", 3),
            ("model_kwargs.base_channels", 8),
            ("model_kwargs.num_res_units", 0),
            ("patch_size", 64),
            ("batch_size", 4),
            ("iterations_per_epoch", 6),
            ("num_threads", 1),
        )
        for a in ("--set", f"{k}={v}")
    ),
]


def _rows(sweep_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(SweepPaths(sweep_dir).table_csv)))


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of ``folder``: its modification time and content (to prove it was left alone)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


# ----------------------------------------------------------------------------------- --param forms
def test_param_forms():
    p = parse_param("optimizer=adam,sgd,adamw")
    assert p.choices == ("adam", "sgd", "adamw") and not p.is_range
    p = parse_param("lr=1e-4:1e-1:log")
    assert (p.low, p.high, p.log, p.is_int) == (1e-4, 1e-1, True, False)
    p = parse_param("model_kwargs.depth=3:5")
    assert (p.low, p.high, p.is_int) == (3, 5, True)
    assert p.overrides(4) == {"model_kwargs": {"depth": 4}}
    assert parse_param("lr=1e-3,1e-2").choices == (1e-3, 1e-2)  # numbers, not YAML's strings
    assert parse_param("deterministic=true,false").choices == (True, False)
    assert parse_param("lr=1:2.5").low == 1.0 and not parse_param("lr=1:2.5").is_int
    for text in ("lr=1e-4:1e-1:log", "optimizer=adam,sgd", "model_kwargs.depth=3:5"):
        assert parse_param(parse_param(text).spec()) == parse_param(text)
    assert grid_of(parse_params(["optimizer=adam,sgd", "lr=1e-3,1e-2"])) == {
        "optimizer": ["adam", "sgd"],
        "lr": [1e-3, 1e-2],
    }
    assert grid_of(parse_params(["optimizer=adam,sgd", "lr=1e-3:1e-2"])) is None


@pytest.mark.parametrize(
    "text, needle",
    [
        ("lr", "expected NAME=a,b,c"),
        ("lr=", "expected NAME=a,b,c"),
        ("lr=1:", "not a number"),
        ("lr=1:2:linear", "expected NAME=a,b,c"),
        ("lr=2:1", "low bound"),
        ("lr=0:1:log", "above 0"),
        ("lr=1,,2", "empty value"),
        ("nosuch=1,2", "not a training option"),
        ("seed.x=1,2", "no sub-options"),
        ("lr=1:2,3", "expected NAME=a,b,c"),
        ("lr=1,1", "twice"),
    ],
)
def test_malformed_params_are_refused(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_param(text)


def test_values_are_checked_against_the_config():
    with pytest.raises(UserError, match="adamm"):
        check_params([parse_param("optimizer=adam,adamm")], {})
    with pytest.raises(UserError, match="patch_size"):
        check_params([parse_param("patch_size=8:64")], {})  # below MIN_PATCH_SIZE
    with pytest.raises(UserError, match="epochs"):
        check_params([parse_param("epochs=1.5:3.5")], {})  # a whole number of epochs
    check_params([parse_param("lr=1e-4:1e-1:log"), parse_param("optimizer=adam,sgd")], {"epochs": 1})
    with pytest.raises(UserError, match="given twice"):
        parse_params(["lr=1,2", "lr=3,4"])


@pytest.mark.slow  # a process per case
@pytest.mark.parametrize(
    "param, needle",
    [
        ("lr=1:", "not a number"),
        ("optimizer=adam,adamm", "adamm"),
        ("lr", "expected NAME=a,b,c"),
        ("nosuch=1:2", "not a training option"),
    ],
)
def test_cli_refuses_malformed_params(tmp_path, synthetic_data, param, needle):
    out = tmp_path / "sweep"
    assert_user_error(run_cli("sweep", synthetic_data, "--out", out, "--param", param, "--epochs", "1"), needle)
    assert not out.exists()


def test_cli_refuses_zero_trials(tmp_path, synthetic_data):
    assert_user_error(
        run_cli("sweep", synthetic_data, "--out", tmp_path / "s", "--param", "lr=1e-3,1e-2", "--trials", "0"),
        "--trials",
    )


# ----------------------------------------------------------------------------------- the study
def _study(tmp_path, params, target=4, prune=True, name="s"):
    space = parse_params(params)
    url = SweepPaths(tmp_path).storage_url()
    return sweep_study.open_study(optuna, url, name, space, {"epochs": 1}, 0, target, prune), space


def test_lists_make_a_grid_ranges_make_tpe(tmp_path):
    study, _ = _study(tmp_path, ["optimizer=adam,sgd", "lr=1e-3,1e-2"])
    assert isinstance(study.sampler, optuna.samplers.GridSampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    study, _ = _study(tmp_path, ["optimizer=adam,sgd", "lr=1e-4:1e-1:log"], prune=False, name="t")
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert isinstance(study.pruner, optuna.pruners.NopPruner)
    assert SweepPaths(tmp_path).study_db.is_file()


def test_tpe_values_stay_inside_their_bounds(tmp_path):
    study, space = _study(tmp_path, ["lr=1e-4:1e-1:log", "model_kwargs.depth=2:4", "optimizer=adam,sgd"], target=16)
    seen = []

    def objective(trial):
        values = {p.name: p.suggest(trial) for p in space}
        seen.append(values)
        return -abs(values["lr"] - 1e-2)

    study.optimize(objective, n_trials=16)
    assert all(1e-4 <= v["lr"] <= 1e-1 for v in seen)
    assert all(isinstance(v["model_kwargs.depth"], int) and 2 <= v["model_kwargs.depth"] <= 4 for v in seen)
    assert {v["optimizer"] for v in seen} <= {"adam", "sgd"}
    assert len({v["lr"] for v in seen}) > 1


def test_a_study_of_other_params_or_options_is_not_continued(tmp_path):
    _study(tmp_path, ["optimizer=adam,sgd"])
    with pytest.raises(UserError, match="sweeps optimizer=adam,sgd"):
        _study(tmp_path, ["optimizer=adam,adamw"])
    with pytest.raises(UserError, match="options"):
        sweep_study.open_study(
            optuna, SweepPaths(tmp_path).storage_url(), "s", parse_params(["optimizer=adam,sgd"]), {"epochs": 2}, 0, 2
        )
    # where a trial runs is not what it trains: a process on a GPU may join a study begun on a CPU
    sweep_study.open_study(
        optuna,
        SweepPaths(tmp_path).storage_url(),
        "s",
        parse_params(["optimizer=adam,sgd"]),
        {"epochs": 1, "device": "cuda"},
        0,
        2,
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_trial_whose_process_died_is_failed_and_queued_again(tmp_path):
    study, space = _study(tmp_path, ["optimizer=adam,sgd", "lr=1e-3,1e-2"])
    done = study.ask()
    [p.suggest(done) for p in space]
    study.tell(done, 0.5)
    killed, alive = study.ask(), study.ask()
    for trial, pid in ((killed, _dead_pid()), (alive, None)):
        values = [p.suggest(trial) for p in space]
        trial.set_user_attr("worker", {**sweep_study.worker_attrs(trial.number), **({"pid": pid} if pid else {})})
    killed_values = dict(killed.params)
    sweep_study.retry_interrupted(optuna, study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[killed.number] == optuna.trial.TrialState.FAIL
    assert states[alive.number] == optuna.trial.TrialState.RUNNING  # its process (this one) is alive
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == killed_values
    assert waiting[0].system_attrs["grid_id"] == study.get_trials()[killed.number].system_attrs["grid_id"]
    sweep_study.retry_interrupted(optuna, study)  # queued once only
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1
    assert values  # the trials had their values


# ----------------------------------------------------------------------------------- pruning
def test_the_epoch_reporter_prunes_a_bad_trial():
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1)
    )
    good = study.ask()
    for epoch in (1, 2, 3):
        good.report(0.8, epoch)
    study.tell(good, 0.8)
    fine = sweep_study.EpochReporter(study.ask())
    assert fine(1, {"val_dice": 0.85, "iteration": 6}) is False and fine.pruned_at is None
    bad = sweep_study.EpochReporter(study.ask())
    assert bad(1, {"val_dice": 0.1, "iteration": 6}) is True
    assert (bad.pruned_at, bad.best, bad.best_epoch, bad.last["steps"]) == (1, 0.1, 1, 6)


@pytest.mark.slow
def test_on_epoch_true_stops_training_cleanly(synthetic_data, tmp_path):
    from biomedseg.runs import open_run
    from biomedseg.training.api import train

    seen = []
    run = train(
        synthetic_data,
        tmp_path / "run",
        epochs=3,
        seed=0,
        quiet=True,
        on_epoch=lambda epoch, row: seen.append((epoch, row["val_dice"])) or True,
        **TINY,
    )
    assert [e for e, _ in seen] == [1]
    folder = open_run(run)
    rows = list(csv.DictReader(open(folder.paths.metrics)))
    assert [int(r["epoch"]) for r in rows] == [1]
    assert folder.has_checkpoint("last") and folder.paths.curves.is_file()


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.slow
def test_a_pruned_trial_is_recorded_and_its_run_folder_kept(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: _AlwaysPrune())
    out = tmp_path / "sweep"
    s = sweeps.sweep(synthetic_data, out, ["optimizer=adam"], **{**FAST, "epochs": 3})
    [row] = _rows(out)
    assert (row["state"], row["note"], row["epochs"]) == ("pruned", "pruned at epoch 1", "1")
    trial = out / row["run"]
    assert (trial / "checkpoints").is_dir() and len(list(csv.DictReader(open(trial / "metrics.csv")))) == 1
    assert s["best"] is None and not SweepPaths(out).best_config.exists()
    assert s["finished"] == 1  # pruned counts as finished: running again trains nothing more


# ----------------------------------------------------------------------------------- whole sweeps
@pytest.mark.slow
def test_grid_sweep_stops_resumes_and_ranks(synthetic_data, tmp_path):
    out = tmp_path / "sweep"
    params = ["optimizer=adam,sgd", "lr=1e-3,1e-2"]
    first = sweeps.sweep(synthetic_data, out, params, trials=2, prune=False, **FAST)
    assert first["finished"] == 2 and first["target"] == 2
    before = {name: _files(out / name) for name in ("trial_000", "trial_001")}
    assert all(before.values()) and not (out / "trial_002").exists()
    second = sweeps.sweep(synthetic_data, out, params, prune=False, **FAST)  # the rest of the grid
    assert second["finished"] == 4 and second["target"] == 4
    assert {name: _files(out / name) for name in before} == before  # the finished trials were not rerun
    rows = _rows(out)
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    assert {(r["optimizer"], float(r["lr"])) for r in rows} == {(o, lr) for o in ("adam", "sgd") for lr in (1e-3, 1e-2)}
    scores = [float(r["val_dice"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(r["state"] == "complete" for r in rows)
    assert all(int(r["steps"]) == TINY["iterations_per_epoch"] for r in rows)
    md = SweepPaths(out).table_md.read_text()
    assert md.count("| complete |") == 4
    best = yaml.safe_load(SweepPaths(out).best_config.read_text())
    cfg = build_config(best)  # ready for train --config
    assert (cfg.optimizer, cfg.lr) == (rows[0]["optimizer"], float(rows[0]["lr"]))
    assert json.loads((out / "run.json").read_text())["kind"] == "sweep"
    third = sweeps.sweep(synthetic_data, out, params, prune=False, **FAST)  # nothing left to do
    assert third["finished"] == 4 and len(_rows(out)) == 4


@pytest.mark.slow
def test_cli_range_sweep_with_test_scores(synthetic_data, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli(
        "sweep", synthetic_data, "--out", out, "--param", "lr=1e-3:1e-2:log", "--trials", "1", "--test", *FAST_ARGS
    )
    assert r.returncode == 0, r.stderr
    assert "1 of 1 trials finished" in r.stdout
    [row] = _rows(out)
    assert 1e-3 <= float(row["lr"]) <= 1e-2
    assert 0 <= float(row["test_dice"]) <= 1 and 0 <= float(row["test_pixel_accuracy"]) <= 1
    assert {"test_dice_cell", "test_dice_filament"} <= set(row)
    assert (out / "evals" / row["run"] / "metrics.json").is_file()
    assert (out / "plan.yaml").is_file() and (out / row["run"] / "config.yaml").is_file()


@pytest.mark.slow
def test_two_processes_share_one_study(synthetic_data, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", synthetic_data, "--out", out, "--param", "optimizer=adam,sgd", "--no-prune", *FAST_ARGS]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "biomedseg.cli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    rows = _rows(out)
    assert sorted(r["optimizer"] for r in rows) == ["adam", "sgd"]  # each grid point trained once, by one process
    assert all(r["state"] == "complete" for r in rows)


# A `biomedseg sweep` process whose trials hold still after their first epoch (its row written),
# having said so in the file argv[1]: the test kills it there, in the middle of trial 0.
_HOLD_AFTER_EPOCH_1 = """
import sys, time
from pathlib import Path
from biomedseg.training import api

marker, real_train = Path(sys.argv[1]), api.train

def train(data, out, on_epoch=None, **kwargs):
    def held(epoch, row):
        stop = on_epoch(epoch, row) if on_epoch else False
        if epoch == 1:
            marker.touch()
            time.sleep(600)
        return stop
    return real_train(data, out, on_epoch=held, **kwargs)

api.train = train
from biomedseg.cli import main
sys.argv = ["biomedseg", *sys.argv[2:]]
main()
"""


@pytest.mark.slow
def test_a_sweep_killed_during_a_trial_retrains_that_trial_only(synthetic_data, tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "sweep"
    held = tmp_path / "epoch1-written"
    args = [
        "sweep",
        synthetic_data,
        "--out",
        out,
        "--param",
        "optimizer=adam,sgd",
        "--no-prune",
        *FAST_ARGS,
        "--epochs",
        "3",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AFTER_EPOCH_1, str(held), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not held.is_file():  # trial 0 is held after epoch 1 of 3: no race with its end
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    assert len((out / "trial_000" / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = sweeps.sweep(synthetic_data, out, ["optimizer=adam,sgd"], prune=False, **{**FAST, "epochs": 3})
    rows = {int(r["trial"]): r for r in _rows(out)}
    assert rows[0]["state"] == "fail" and s["finished"] == 2
    assert sorted(r["optimizer"] for r in rows.values() if r["state"] == "complete") == ["adam", "sgd"]
    retry = next(r for r in rows.values() if r["note"] == "retry of trial 0")
    assert (retry["optimizer"], retry["state"], retry["epochs"]) == (rows[0]["optimizer"], "complete", "3")
    assert len(rows) == 3  # the killed trial, its retry, the other grid point


@pytest.mark.slow
def test_a_diverged_trial_is_recorded_and_the_sweep_goes_on(synthetic_data, tmp_path, monkeypatch):
    from biomedseg.training import api
    from biomedseg.training.trainer import TrainingDiverged

    real_train = api.train

    def train(data, out, **kwargs):
        if kwargs["lr"] == 1e-2:
            raise TrainingDiverged(f"{out}: training diverged: 3 non-finite losses in a row")
        return real_train(data, out, **kwargs)

    monkeypatch.setattr(api, "train", train)
    out = tmp_path / "sweep"
    s = sweeps.sweep(synthetic_data, out, ["lr=1e-3,1e-2"], prune=False, **FAST)
    rows = {r["lr"]: r for r in _rows(out)}
    assert rows["0.01"]["state"] == "fail" and "diverged" in rows["0.01"]["note"]
    assert rows["0.001"]["state"] == "complete" and list(rows) == ["0.001", "0.01"]  # ranked first
    assert s["finished"] == 2 and s["best"] == int(rows["0.001"]["trial"])
    assert sweeps.sweep(synthetic_data, out, ["lr=1e-3,1e-2"], prune=False, **FAST)["finished"] == 2  # not retried
