"""``biomedseg sweep``: one ordinary training run per setting of the swept options, ranked.

An Optuna study drives the trials: a grid sampler when every ``--param`` is a list (each
combination once), TPE when one is a range; a median pruner stops a trial whose validation Dice
at an epoch is below the median of the finished trials at that epoch (the trial's run folder is
kept and the trial recorded as pruned). The study lives in ``SWEEP/study.db`` (SQLite) unless
``storage`` names another database, so that:

- a sweep run again continues: finished trials are not trained again; a trial whose process died
  (killed, Ctrl-C, a lost machine) is marked failed and retried as a new trial;
- several ``biomedseg sweep`` processes (one per GPU, or on several machines with a shared
  ``storage``) work on one study; each trial is claimed by one process.

Each trial is ``train(DATA, SWEEP/trial_NNN, **options, **trial params)`` with the plan made once
(``SWEEP/plan.yaml``) and the seed fixed (unless swept), so trials differ only by the swept
options. After each trial ``SWEEP/table.md`` and ``table.csv`` are rewritten (every trial of the
study, best validation Dice first) and ``SWEEP/best_config.yaml`` holds the best finished trial's
resolved config, ready for ``train --config``. With ``test=True`` each finished trial is also
evaluated on the test split (:func:`biomedseg.workflows.evaluation.evaluate`, into ``SWEEP/evals/``).

``objective``: a per-image field metric (``--objective aji``, ``hd95``, ``pq`` ...; default the
validation Dice): each finished trial is then evaluated on its validation split with that metric's
group (into ``SWEEP/evals/trial_NNN_val/``) and the study ranks trials by its mean over the
validation images (``val_<name>``; distances and errors: lower is better). Pruning still compares
the validation Dice of each epoch, the only score known during training. A study keeps the
objective it was started with.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from biomedseg.core.errors import UserError
from biomedseg.io.writers import write_text
from biomedseg.runs.config import load_config_file, merge
from biomedseg.runs.sweep import SweepPaths, create_sweep
from biomedseg.sweeps.space import Param, check_params, grid_of, grid_size, parse_params
from biomedseg.sweeps.study import (
    SCORE,
    EpochReporter,
    load_optuna,
    n_finished,
    open_study,
    retry_interrupted,
    worker_attrs,
)

log = logging.getLogger("biomedseg")

#: the study's name in its storage (several sweeps may share one database under other names)
DEFAULT_STUDY_NAME = "biomedseg-sweep"
#: finished trials a sweep with ranges aims for when --trials is not given (a grid: all its points)
DEFAULT_TRIALS = 20


@dataclass
class _Sweep:
    """What every trial of one ``sweep`` call shares."""

    data: Path
    paths: SweepPaths
    space: list[Param]
    overrides: dict  # the user's options (besides the config file), under the swept ones
    config: Path | None
    plan: Path | None
    test: bool
    device: str
    target: int  # finished trials the study should hold
    quiet: bool
    objective: str | None = None  # a field metric ranking the trials (None: validation Dice)

    @property
    def rank_column(self) -> str:
        return f"val_{self.objective}" if self.objective else SCORE

    @property
    def lower_is_better(self) -> bool:
        from biomedseg.metrics.field import metric_direction

        return bool(self.objective) and metric_direction(self.objective) == "lower"


def sweep(
    data,
    out,
    params,
    *,
    trials: int | None = None,
    time_budget_per_trial=None,
    test: bool = False,
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY_NAME,
    prune: bool = True,
    plan=None,
    config=None,
    scheduler=None,
    quiet: bool = False,
    objective: str | None = None,
    **overrides,
) -> dict:
    """Run (or continue) the sweep of ``params`` (``--param`` texts or :class:`Param`) on ``data``
    into the sweep folder ``out``; ``overrides`` are training options shared by every trial.

    ``trials``: finished trials (complete, pruned or diverged) the study should hold; default the
    whole grid, or :data:`DEFAULT_TRIALS` with ranges. ``scheduler``: train the trials as jobs on a
    Dask cluster (any form of :func:`biomedseg.runtime.cluster.connect`): one sweep process per worker on
    the same study. ``objective``: a field metric ranking the trials (module docstring). Returns the
    summary of :func:`write_results`.
    """
    from biomedseg.training.api import resolve_config

    objective = _check_objective_name(objective)
    space = parse_params(params)
    if trials is not None and trials < 1:
        raise UserError(f"--trials {trials}: must be >= 1")
    if time_budget_per_trial is not None:
        overrides = merge(overrides, {"time_budget": time_budget_per_trial})
    cfg = resolve_config(config, overrides)
    options = merge(load_config_file(config), overrides)
    check_params(space, options)
    grid = grid_of(space)
    target = min(trials or grid_size(space), grid_size(space)) if grid else (trials or DEFAULT_TRIALS)
    if scheduler is not None:
        check_cluster_storage(scheduler, storage, out)
    optuna = load_optuna()
    paths = create_sweep(out)
    study = open_study(
        optuna, storage or paths.storage_url(), study_name, space, cfg.model_dump(mode="json"), cfg.seed, target, prune
    )
    shared_plan = _shared_plan(paths, plan, data, config, overrides, space, quiet) if cfg.auto_plan else None
    _same_objective(study, storage or paths.storage_url(), objective)
    sw = _Sweep(
        Path(data),
        paths,
        space,
        overrides,
        Path(config) if config else None,
        shared_plan,
        test,
        cfg.device,
        target,
        quiet,
        objective,
    )
    retry_interrupted(optuna, study)
    if scheduler is None:
        _optimize(optuna, study, sw)
    else:
        job = dict(
            params=[p.spec() for p in space],
            trials=target,
            storage=storage or paths.storage_url(),
            study_name=study_name,
            prune=prune,
            test=test,
            overrides=overrides,
            objective=objective,
            plan=str(Path(shared_plan or plan).resolve()) if (shared_plan or plan) else None,
            config=str(Path(config).resolve()) if config else None,
        )
        _on_cluster(optuna, study, sw, scheduler, job)
    return write_results(optuna, study, sw)


def check_cluster_storage(scheduler, storage: str | None, out) -> None:
    """Refuse a SQLite study (the default ``SWEEP/study.db``) shared with Dask workers on other
    machines: SQLite's locks do not hold on network file systems, so trials could be lost or
    claimed twice. A local cluster or workers all on this machine are fine; without any worker
    connected yet the hosts are unknown, and a warning names the fix."""
    from biomedseg.runtime.cluster import connect, parse_local

    url = storage or SweepPaths(out).storage_url()
    if not url.startswith("sqlite") or (isinstance(scheduler, str) and parse_local(scheduler) is not None):
        return
    from distributed.comm import get_address_host

    with connect(scheduler) as client:
        workers = client.scheduler_info().get("workers", {})
    hosts = {str(info.get("host") or get_address_host(addr)) for addr, info in workers.items()}
    fix = "give every process one database server: --storage postgresql://user:pass@host/db"
    remote = sorted(hosts - _this_machine())
    if remote:
        raise UserError(
            f"{url.split(':///', 1)[-1]}: a SQLite study shared with workers on other machines "
            f"({', '.join(remote)}) is unsafe on a network file system; {fix}"
        )
    if not hosts:
        log.warning(
            "--scheduler %s: no worker connected yet; if workers join from other machines, the SQLite "
            "study %s is unsafe on a network file system: %s",
            scheduler,
            url,
            fix,
        )


def _this_machine() -> set[str]:
    """Names and addresses of this machine (loopback included)."""
    import socket

    import psutil  # a dependency of dask.distributed

    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    for nic in psutil.net_if_addrs().values():
        names.update(a.address.split("%")[0] for a in nic if a.family in (socket.AF_INET, socket.AF_INET6))
    return names


def _on_cluster(optuna, study, sw: _Sweep, scheduler, job: dict) -> None:
    """As many sweep processes as the cluster has workers (at most the trials still to train), each
    a job running :func:`sweep` on the shared study until it holds ``sw.target`` trials."""
    from biomedseg.runtime.cluster import connect, n_workers, run_jobs

    todo = sw.target - n_finished(optuna, study, running=True)
    if todo <= 0:
        log.info("the study holds its %d trials: nothing to train", sw.target)
        return
    with connect(scheduler) as client:
        n = min(n_workers(client), todo)
        log.info("%d trials to train by %d sweep processes on the cluster", todo, n)
        jobs = [(f"sweep-{i}", (str(sw.data.resolve()), str(sw.paths.root.resolve()), job)) for i in range(n)]
        _, failed = run_jobs(client, _sweep_job, jobs, quiet=sw.quiet, what="sweep processes")
    for label, message in failed:
        log.error("%s stopped: %s", label, message)


def _sweep_job(data: str, out: str, job: dict) -> int:
    """One sweep process in a Dask worker (torch threads: the worker's unless ``num_threads`` is set)."""
    import os

    from biomedseg.runtime.cluster import with_worker_threads

    overrides = with_worker_threads(job["overrides"])
    sweep(
        data,
        out,
        job["params"],
        trials=job["trials"],
        storage=job["storage"],
        study_name=job["study_name"],
        prune=job["prune"],
        test=job["test"],
        plan=job["plan"],
        config=job["config"],
        quiet=True,
        objective=job.get("objective"),
        **overrides,
    )
    return os.getpid()


def _shared_plan(paths: SweepPaths, plan, data, config, overrides: dict, space: list[Param], quiet: bool) -> Path:
    """``SWEEP/plan.yaml``: planned once (or copied from ``plan``) and reused by every trial and run."""
    from biomedseg.runs import read_plan
    from biomedseg.training.api import plan_data

    if not paths.plan.is_file():
        if plan is not None:
            read_plan(plan)  # checked before it is copied
            write_text(paths.plan, Path(plan).read_text())
        else:
            plan_data(data, paths.plan, config=config, quiet=quiet, **overrides)
    planned = read_plan(paths.plan)
    for p in space:
        if p.name.split(".")[0] in planned:
            log.info(
                "%s is swept: each trial's value replaces the plan's (%s); the rest of the plan stays",
                p.name,
                planned[p.name.split(".")[0]]["value"],
            )
    return paths.plan


# ------------------------------------------------------------------------------------ the trials
def _optimize(optuna, study, sw: _Sweep) -> None:
    """Train trials until the study holds ``sw.target`` finished or running ones (trials that other
    processes are training count: each trial is trained by one process)."""
    claimed = n_finished(optuna, study, running=True)
    if claimed >= sw.target:
        log.info("the study holds %d finished or running trials (target %d): nothing to train here", claimed, sw.target)
        return

    def after_trial(study_, trial) -> None:
        if not sw.quiet:
            log.info("%s", _trial_line(trial))
        write_results(optuna, study_, sw)
        if n_finished(optuna, study_, running=True) >= sw.target:
            study_.stop()

    study.optimize(lambda trial: _objective(optuna, trial, sw), callbacks=[after_trial], gc_after_trial=True)


def _objective(optuna, trial, sw: _Sweep) -> float:
    """Train trial ``trial``'s run folder; its best validation Dice (NaN: training diverged)."""
    from biomedseg.training.trainer import TrainingDiverged
    from biomedseg.workflows.training import train

    values = {p.name: p.suggest(trial) for p in sw.space}
    run_dir = sw.paths.trial(trial.number)
    trial.set_user_attr("run", run_dir.name)
    trial.set_user_attr("worker", worker_attrs(trial.number))
    reporter = EpochReporter(trial)
    layers = [p.overrides(values[p.name]) for p in sw.space]
    started = time.perf_counter()
    try:
        train(
            sw.data,
            run_dir,
            config=sw.config,
            plan=sw.plan,
            quiet=sw.quiet,
            on_epoch=reporter,
            **merge(sw.overrides, *layers),
        )
    except TrainingDiverged as exc:
        _record(trial, reporter, started, error=str(exc))
        return float("nan")  # a failed trial, counted as finished (its settings diverge)
    _record(trial, reporter, started, config=_resolved_config(run_dir))
    if reporter.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned at epoch {reporter.pruned_at}")
    if not math.isfinite(reporter.best):
        raise UserError(f"{run_dir}: no validation Dice (no validation images?): a sweep ranks trials by it")
    if sw.test:
        trial.set_user_attr("test", _test_scores(run_dir, sw, trial.number))
    if sw.objective:
        value = _validation_objective(run_dir, sw, trial.number)
        trial.set_user_attr(sw.rank_column, value)
        return -value if sw.lower_is_better else value
    return reporter.best


def _check_objective_name(objective: str | None) -> str | None:
    """``None`` for the validation Dice (``val_dice``, ``dice``, ``image_dice`` say the same), else the
    per-image column named (a one-line error for an unknown name)."""
    if objective is None or objective in (SCORE, "dice", "image_dice"):
        return None
    from biomedseg.workflows.comparison import metric_group

    metric_group(objective)
    return objective


def _same_objective(study, url: str, objective: str | None) -> None:
    """Record the objective with a new study; refuse to continue a study ranked by another."""
    name = objective or SCORE
    before = study.user_attrs.get("objective")
    if before is None and not study.get_trials(deepcopy=False):
        study.set_user_attr("objective", name)
    elif (before or SCORE) != name:
        raise UserError(
            f"{url}: study {study.study_name!r} ranks trials by {before or SCORE}, not {name}; "
            "use another --out or --study-name"
        )


def _validation_objective(run_dir: Path, sw: _Sweep, number: int) -> float:
    """Mean of ``sw.objective`` over the trial's validation images."""
    from biomedseg.workflows.comparison import metric_group
    from biomedseg.workflows.evaluation import evaluate

    out = sw.paths.evaluation(number).with_name(f"{sw.paths.evaluation(number).name}_val")
    m = evaluate(
        run_dir,
        sw.data,
        out,
        split="val",
        overlays=False,
        quiet=True,
        device=sw.device,
        metrics=metric_group(sw.objective),
    )
    value = m.get(sw.objective)
    if not isinstance(value, float) or not math.isfinite(value):
        raise UserError(f"{out}: no {sw.objective} on the validation images")
    return value


def _record(trial, reporter: EpochReporter, started: float, **extra) -> None:
    attrs = {
        SCORE: reporter.best if math.isfinite(reporter.best) else None,
        "best_epoch": reporter.best_epoch,
        **reporter.last,
        "seconds": round(time.perf_counter() - started),
        **extra,
    }
    if reporter.pruned_at is not None:
        attrs["pruned_at"] = reporter.pruned_at
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _resolved_config(run_dir: Path) -> dict:
    from biomedseg.runs import open_run

    return open_run(run_dir).config_values()


def _test_scores(run_dir: Path, sw: _Sweep, number: int) -> dict:
    """Dice (mean and per class) and pixel accuracy of the trial on the test split."""
    from biomedseg.workflows.evaluation import evaluate

    m = evaluate(
        run_dir, sw.data, sw.paths.evaluation(number), split="test", overlays=False, quiet=True, device=sw.device
    )
    scores = {"test_dice": m["dice"]}
    scores.update({f"test_dice_{name}": c["dice"] for name, c in m["per_class"].items()})
    scores["test_pixel_accuracy"] = m["pixel_accuracy"]
    return scores


def _trial_line(trial) -> str:
    a = trial.user_attrs
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    score = f"val Dice {a[SCORE]:.4f}" if a.get(SCORE) is not None else "no val Dice"
    return f"trial {trial.number} ({params}): {trial.state.name.lower()}, {score}, {a.get('steps', 0)} steps"


# ------------------------------------------------------------------------------------ the results
def trial_rows(optuna, study, space: list[Param], sw: _Sweep | None = None) -> tuple[list[dict], list[str]]:
    """One row per trial of the study (best first by ``sw``'s objective, default the validation Dice)
    and the table's columns."""
    rows, test_cols = [], []
    rank = sw.rank_column if sw is not None else SCORE
    sign = -1.0 if sw is not None and sw.lower_is_better else 1.0
    extra = [rank] if rank != SCORE else []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        row = {
            "trial": t.number,
            **{p.name: _param_text(t.params.get(p.name)) for p in space},
            "state": t.state.name.lower(),
            SCORE: a.get(SCORE),
            **{k: a.get(k) for k in extra},
            **(a.get("test") or {}),
            "best_epoch": a.get("best_epoch"),
            "epochs": a.get("epochs"),
            "steps": a.get("steps"),
            "seconds": a.get("seconds"),
            "run": a.get("run"),
            "note": _note(t),
        }
        test_cols += [k for k in (a.get("test") or {}) if k not in test_cols]
        rows.append(row)
    rows.sort(key=lambda r: (r[rank] is None, -sign * (r[rank] or 0.0), r["trial"]))
    columns = [
        "trial",
        *(p.name for p in space),
        "state",
        SCORE,
        *extra,
        *test_cols,
        "best_epoch",
        "epochs",
        "steps",
        "seconds",
        "run",
        "note",
    ]
    return rows, columns


def _param_text(value) -> str | None:
    return None if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def _note(t) -> str:
    a = t.user_attrs
    if "pruned_at" in a:
        return f"pruned at epoch {a['pruned_at']}"
    if "error" in a:
        return a["error"].splitlines()[0][:160]
    history = t.system_attrs.get("retry_history")
    return f"retry of trial {history[-1]}" if history else ""


def write_results(optuna, study, sw: _Sweep) -> dict:
    """``table.md``, ``table.csv`` and ``best_config.yaml``; returns ``{"rows", "best", "table",
    "csv", "best_config", "finished", "target"}``."""
    from biomedseg.reports.sweep_table import write_sweep_table

    rows, columns = trial_rows(optuna, study, sw.space, sw)
    rank, sign = sw.rank_column, (-1.0 if sw.lower_is_better else 1.0)
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("config") and t.user_attrs.get(rank) is not None
    ]
    best = max(complete, key=lambda t: (sign * t.user_attrs[rank], -t.number), default=None)
    order = " (lower is better)" if sign < 0 else ""
    notes = [f"trials share {sw.paths.plan.name} (planned once) and the seed unless swept; ranked by {rank}{order}"]
    if best is not None:
        write_text(sw.paths.best_config, yaml.safe_dump(best.user_attrs["config"], sort_keys=False))
        notes.append(
            f"best: {best.user_attrs.get('run')} ({rank} {best.user_attrs[rank]:.4f}); its config: "
            f"{sw.paths.best_config.name} (biomedseg train DATA --config {sw.paths.best_config} --out RUN)"
        )
    md, csv_path = write_sweep_table(
        rows, columns, sw.paths.table_md, sw.paths.table_csv, title=f"biomedseg sweep: {sw.data.name}", notes=notes
    )
    return {
        "rows": rows,
        "columns": columns,
        "best": best.number if best is not None else None,
        "table": md,
        "csv": csv_path,
        "best_config": sw.paths.best_config if best is not None else None,
        "finished": n_finished(optuna, study),
        "target": sw.target,
    }
