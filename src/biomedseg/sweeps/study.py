"""The Optuna side of a sweep: the study, its database, interrupted trials, the per-epoch reporter.

The study lives in an SQL database (``sqlite:///SWEEP/study.db``, or any SQLAlchemy URL that several
machines reach) with heartbeats: a trial whose process died is failed and queued again, on this
machine at once (its process is gone), elsewhere once its heartbeat is ``GRACE_S`` old. Optuna is
imported by the caller (:func:`load_optuna`) and passed in, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
import warnings

from biomedseg.core.errors import UserError
from biomedseg.sweeps.space import Param, grid_of

log = logging.getLogger("biomedseg")

#: the epoch-row column trials are ranked and pruned by
SCORE = "val_dice"
#: median pruning: finished trials needed before any pruning, and the first epoch that may be pruned
#: (the first epochs are too noisy to judge a setting by)
PRUNE_STARTUP_TRIALS = 2
PRUNE_FROM_EPOCH = 3
#: TPE: random trials before the model of good settings is used (at most; a quarter of the trials)
TPE_STARTUP_MAX = 10
#: a trial whose process stopped writing its heartbeat this long ago (s) is failed and retried
HEARTBEAT_S = 60
GRACE_S = 180
#: retries of a trial whose process died
MAX_RETRY = 3
#: seconds a process waits for a SQLite study that another process is writing
SQLITE_TIMEOUT_S = 60
#: tries to open the study's database (processes starting together race to create its tables)
STORAGE_ATTEMPTS = 5
#: options that say where a trial runs, not what it trains: processes of one study may differ in them
RUNTIME_OPTIONS = ("device", "num_threads")


def load_optuna():
    """The ``optuna`` module, quiet; a one-line :class:`UserError` when it is not installed."""
    try:
        import optuna
    except ImportError:
        raise UserError("biomedseg sweep needs Optuna: pip install 'biomedseg[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and retries are marked experimental; they are what lets a sweep resume
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_study(
    optuna, url: str, name: str, space: list[Param], options: dict, seed: int, target: int, prune: bool = True
):
    """Create or load the study ``name`` in the database ``url``: a grid sampler when every parameter is
    a list, else TPE; median pruning (or none); ``target``: trials the sweep aims for. A loaded study
    must sweep the same parameters with the same ``options`` (the resolved config values; those of
    :data:`RUNTIME_OPTIONS` aside)."""
    rdb = _storage(optuna, url)
    grid = grid_of(space)
    if grid is not None:
        sampler = optuna.samplers.GridSampler(grid, seed=seed)
    else:  # a per-process seed: processes started together must not all draw the same first trials
        sampler = optuna.samplers.TPESampler(
            seed=(seed * 1_000_003 + os.getpid()) % 2**32, n_startup_trials=max(1, min(TPE_STARTUP_MAX, target // 4))
        )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=PRUNE_FROM_EPOCH)
        if prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=rdb, study_name=name, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True
    )
    recorded = {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}
    _check_same_sweep(study, url, [p.spec() for p in space], json.loads(json.dumps(recorded, default=str)))
    return study


def _storage(optuna, url: str):
    """The study's database, with heartbeats; processes that create it at the same moment collide
    on its tables (a database error), so a failed open is tried again a few times."""
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else None
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry,
            )
        except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable server, a race
            racing = type(exc).__name__ in ("OperationalError", "IntegrityError")
            if not racing or attempt == STORAGE_ATTEMPTS:
                raise UserError(f"--storage {url}: cannot open ({str(exc).splitlines()[0][:200]})") from None
            time.sleep(random.uniform(0.2, 1.0) * attempt)


def _check_same_sweep(study, url: str, specs: list[str], options: dict) -> None:
    """Record the sweep's parameters and options with a new study; refuse to continue one of others."""
    attrs = study.user_attrs
    if "params" not in attrs:
        study.set_user_attr("params", specs)
        study.set_user_attr("options", options)
        return
    if sorted(attrs["params"]) != sorted(specs):
        raise UserError(
            f"{url}: study {study.study_name!r} sweeps {' '.join(attrs['params'])}, not "
            f"{' '.join(specs)}; use another --out or --study-name"
        )
    old = attrs.get("options") or {}
    differ = [
        f"{k} {old.get(k)!r} there, {options.get(k)!r} now"
        for k in sorted(set(old) | set(options))
        if old.get(k) != options.get(k)
    ]
    if differ:
        raise UserError(
            f"{url}: study {study.study_name!r} was started with other options ({'; '.join(differ[:3])}); "
            f"use the same options, another --out or --study-name"
        )


def worker_attrs(number: int) -> dict:
    """Who trains trial ``number``: this machine and process (to tell later whether it died)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "trial": number}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_interrupted(optuna, study) -> None:
    """Trials whose process died: running on this machine under a process that is gone (killed), or
    failed without a recorded error (Ctrl-C), are marked failed and queued again (once each).
    Trials of processes on other machines are failed by the heartbeat after ``GRACE_S``."""
    TrialState = optuna.trial.TrialState
    storage, host = study._storage, socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") == host and worker.get("trial") == t.number and not _alive(worker.get("pid", -1)):
            try:
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    for t in trials:
        if t.state == TrialState.FAIL and "error" not in t.user_attrs and t.number not in retried:
            log.info("trial %d was interrupted: queued again", t.number)
            retry(study, t)


def n_finished(optuna, study, running: bool = False) -> int:
    """Finished trials: complete, pruned, or failed with a recorded error (diverged); ``running``:
    and those being trained now (by any process)."""
    TrialState = optuna.trial.TrialState
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (running and t.state == TrialState.RUNNING)
        or (t.state == TrialState.FAIL and "error" in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


class EpochReporter:
    """The ``on_epoch`` callback of one trial: reports the validation Dice of each validated epoch
    to the trial and asks training to stop when the pruner says so (``trial``: an Optuna trial)."""

    def __init__(self, trial):
        self.trial = trial
        self.best = float("nan")
        self.best_epoch = 0
        self.last: dict = {}
        self.pruned_at: int | None = None

    def __call__(self, epoch: int, row: dict) -> bool:
        score = float(row.get(SCORE, float("nan")))
        if math.isfinite(score) and not score <= self.best:
            self.best, self.best_epoch = score, epoch
        self.last = {"epochs": epoch, "steps": int(row.get("iteration", 0))}
        if math.isfinite(score):
            self.trial.report(score, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            return True
        return False
