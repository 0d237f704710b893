"""``biomedseg cv``: k-fold cross-validation over the training pool, and the ensemble of its folds.

:func:`cross_validate` writes the CV folder of :mod:`biomedseg.runs.cv`:

1. folds over the **training pool** (``dataset.json``'s train + val ids, or every pair when it has
   no split; its test split is never touched, and ``DATA/exclude.txt`` is honoured), with the
   near-duplicate groups of the audit kept in one fold and optionally stratified by the rarest
   class present (:func:`biomedseg.data.folds.make_folds`); written once to ``folds.json``;
2. one plan for all folds (``CV/plan.yaml``, planned on the whole pool for one fold's budget);
3. each fold trained as an ordinary run ``CV/fold_<i>`` on its split, with the shared plan;
   the time budget is ``time_budget / k`` per fold unless ``budget_per_fold`` is given;
4. each fold's validation images predicted by it (out-of-fold, ``CV/oof/<id>.npy``);
5. ``CV/summary.json``: per-fold and mean +/- sd validation scores, and the scores of the
   out-of-fold predictions pooled over the whole pool (the field metrics that ``dataset.json`` or
   the pool's fingerprint chooses included: ``field_scores``, means over images);
   ``CV/config.yaml`` and ``dataset.json``
   make the CV folder the ensemble of its folds (``evaluate``/``predict`` accept it);
6. the calibration temperature fitted on the out-of-fold probabilities
   (:func:`~biomedseg.workflows.reliability.calibrate_cv`), stored in ``CV/postprocess.yaml``
   ``temperature`` and, with the expected calibration error before and after, in ``summary.json``
   ``calibration``.

Run again, it skips finished folds, resumes a fold interrupted mid-training from its
``last.pt``, and predicts the out-of-fold images of a fold trained but not yet predicted.
``fold=K`` does fold K only (one process per GPU); ``prepare=True`` writes the folds and the plan
and stops. Parallel fold processes started without it share them too: the first one prepares
them under a lock (:func:`biomedseg.runs.cv.preparing`), the others wait and reuse them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import yaml

from biomedseg.core.errors import UserError
from biomedseg.data.folds import DEFAULT_FOLDS, fold_splits, make_folds
from biomedseg.io.writers import write_text
from biomedseg.runs.cv import DONE, TRAINED, CVFolder, create_cv, preparing

log = logging.getLogger("biomedseg")

#: scores of the per-fold table and of the mean +/- sd
SUMMARY_SCORES = ("dice", "iou", "precision", "recall", "image_dice")


def cross_validate(
    data,
    out,
    *,
    folds: int = DEFAULT_FOLDS,
    fold: int | None = None,
    time_budget=None,
    budget_per_fold=None,
    stratify: bool = False,
    audit=None,
    check_flips: bool = False,
    config=None,
    plan=None,
    tta: str = "none",
    prepare: bool = False,
    scheduler=None,
    quiet: bool = False,
    **overrides,
) -> dict:
    """Cross-validate on the DATA folder ``data`` into the CV folder ``out`` (see the module docstring).

    ``overrides`` are training options as for :func:`biomedseg.training.api.train`. ``time_budget``:
    for all folds together; ``budget_per_fold``: for each fold (wins). ``audit``: an audit dict,
    ``audit.json`` or its folder for the near-duplicate groups (default: audit now). ``tta``:
    test-time augmentation of the out-of-fold predictions. ``scheduler``: run the unfinished folds
    as jobs on a Dask cluster (any form of :func:`biomedseg.runtime.cluster.connect`). Returns the summary
    (``{"missing": [folds]}`` while folds are unfinished).
    """
    from biomedseg.runs.config import parse_duration
    from biomedseg.training.api import resolve_settings

    cfg, _ = resolve_settings(config, {**overrides, **({"time_budget": time_budget} if time_budget else {})})
    per_fold = (
        parse_duration(budget_per_fold)
        if budget_per_fold is not None
        else (cfg.time_budget / folds if cfg.time_budget else None)
    )
    if fold is not None and not 0 <= fold < folds:
        raise UserError(f"--fold {fold}: expected 0..{folds - 1}")
    fold_options = {**overrides, **({"time_budget": per_fold} if per_fold else {})}
    with preparing(out):  # parallel `cv --fold K` processes: the first prepares, the others wait and reuse
        cv = create_cv(out, folds=folds, budget_per_fold_s=per_fold, stratified=stratify)
        if cv.n_folds() != folds:
            raise UserError(f"{cv.root}: a CV of {cv.n_folds()} folds, not {folds}")
        assignment = assign_folds(cv, cfg, data, folds, stratify, audit, check_flips, quiet)
        if cfg.auto_plan and not cv.paths.plan.is_file():
            shared_plan(cv, data, config, plan, assignment, fold_options, quiet)
    if prepare:
        return {"prepared": str(cv.root), "missing": list(range(folds))}
    if scheduler is not None and fold is None:
        return folds_on_cluster(cv, scheduler, data, stratify, config, fold_options, tta, quiet)
    for i in range(folds) if fold is None else [fold]:
        run_fold(cv, i, data, assignment["folds"][i], config, fold_options, tta, cfg.device, quiet)
    return finish(cv)


def assign_folds(cv: CVFolder, cfg, data, k: int, stratify: bool, audit, check_flips: bool, quiet: bool) -> dict:
    """``folds.json``: made once (training pool, duplicate groups from the audit), then reused."""
    from biomedseg.audit.split import duplicate_groups
    from biomedseg.training.data_setup import prepare_data

    if cv.folds_json.is_file():
        record = cv.folds()
        if (record.get("seed"), record.get("stratified")) != (cfg.seed, stratify):
            log.warning(
                "%s: keeps its folds (seed %s, stratified %s) made when the CV started",
                cv.folds_json,
                record.get("seed"),
                record.get("stratified"),
            )
        return record
    setup = prepare_data(cfg, data)
    pool = sorted(setup.split["train"] + setup.split.get("val", []))
    groups, labels = duplicate_groups(setup.source.root, audit, check_flips, progress=not quiet, stratify=stratify)
    folds = make_folds(pool, groups, k, cfg.seed, labels)
    grouped = [g for g in groups if len(g & set(pool)) > 1]
    record = {
        "k": k,
        "seed": cfg.seed,
        "stratified": stratify,
        "data": str(Path(setup.source.root).resolve()),
        "pool": pool,
        "test": setup.split.get("test", []),
        "duplicate_groups": len(grouped),
        "folds": fold_splits(folds),
    }
    cv.write_folds(record)
    log.info(
        "%d folds over %d training-pool images (%d near-duplicate groups kept in one fold; %d test images left out)",
        k,
        len(pool),
        len(grouped),
        len(record["test"]),
    )
    return record


def shared_plan(cv: CVFolder, data, config, plan, assignment: dict, fold_options: dict, quiet: bool) -> None:
    """``CV/plan.yaml``: the given plan file, or a plan of the whole pool for one fold's budget."""
    from biomedseg.planning.ensemble import cv_plan_entry, fold_advice
    from biomedseg.training.api import plan_data

    if plan is not None:
        write_text(cv.paths.plan, Path(plan).read_text())
        return
    result = plan_data(
        data, None, config=config, quiet=quiet, split={"train": assignment["pool"], "val": []}, **fold_options
    )
    steps = (result.get("iterations") or {}).get("value")
    result["ensemble"] = cv_plan_entry(steps, fold_options.get("time_budget"))
    write_text(cv.paths.plan, yaml.safe_dump(result, sort_keys=False))
    if fold_advice(steps, fold_options.get("time_budget")):
        log.warning("%s", result["ensemble"]["reason"])


def run_fold(
    cv: CVFolder, i: int, data, split: dict, config, fold_options: dict, tta: str, device: str, quiet: bool
) -> None:
    """Train fold ``i`` (resuming its ``last.pt``) unless trained, then predict its out-of-fold images."""
    from biomedseg.workflows.oof import predict_fold_oof
    from biomedseg.workflows.training import train

    state = cv.fold_state(i)
    if state == DONE:
        log.info("fold %d: finished, skipped", i)
        return
    if state is None:
        resume = cv.fold(i).has_checkpoint("last")
        log.info(
            "fold %d: %s (%d training, %d validation images)",
            i,
            "resuming" if resume else "training",
            len(split["train"]),
            len(split["val"]),
        )
        plan = cv.paths.plan if cv.paths.plan.is_file() else None
        train(
            data,
            cv.fold_dir(i),
            config=config,
            resume=resume,
            quiet=quiet,
            plan=plan,
            split={"train": split["train"], "val": split["val"]},
            **fold_options,
        )
        cv.write_fold_record(i, {"status": TRAINED})
    cv.write_fold_record(i, predict_fold_oof(cv, i, tta, device, quiet))


def folds_on_cluster(
    cv: CVFolder, scheduler, data, stratify: bool, config, fold_options: dict, tta: str, quiet: bool
) -> dict:
    """Each unfinished fold as one job (``cross_validate(fold=i)`` in a worker process, the folds
    and plan already written), then the summary here; a failed fold is reported, the others go on.
    The summary gains ``workers`` (the process ids that trained) and ``failed``."""
    from biomedseg.runtime.cluster import connect, run_jobs

    todo = [i for i in range(cv.n_folds()) if cv.fold_state(i) != DONE]
    options = dict(fold_options)
    per_fold = options.pop("time_budget", None)
    jobs = [
        (
            f"cv-fold-{i}",
            (
                str(Path(data).resolve()),
                str(cv.root.resolve()),
                cv.n_folds(),
                i,
                stratify,
                str(Path(config).resolve()) if config else None,
                per_fold,
                options,
                tta,
            ),
        )
        for i in todo
    ]
    with connect(scheduler) as client:
        log.info("%d folds to train on the cluster (%d finished)", len(todo), cv.n_folds() - len(todo))
        results, failed = run_jobs(client, _fold_job, jobs, quiet=quiet, what="folds")
    summary = finish(cv)
    summary.update(workers=sorted(set(results.values())), failed=failed)
    return summary


def _fold_job(data: str, out: str, k: int, i: int, stratify: bool, config, per_fold, options: dict, tta: str) -> int:
    """One fold in a Dask worker (torch threads: the worker's, unless ``num_threads`` is set); its pid."""
    import os

    from biomedseg.runtime.cluster import with_worker_threads

    cross_validate(
        data,
        out,
        folds=k,
        fold=i,
        budget_per_fold=per_fold,
        stratify=stratify,
        config=config,
        tta=tta,
        quiet=True,
        **with_worker_threads(options),
    )
    return os.getpid()


def finish(cv: CVFolder) -> dict:
    """When every fold is done: the ensemble records and ``summary.json``; else the missing folds."""
    from biomedseg.runs.ensemble import write_ensemble_records

    k = cv.n_folds()
    missing = [i for i in range(k) if cv.fold_state(i) != DONE]
    if missing:
        log.info(
            "folds %s not finished yet: run `biomedseg cv` again (or --fold K for each)", ", ".join(map(str, missing))
        )
        return {"missing": missing}
    from biomedseg.workflows.reliability import calibrate_cv

    write_ensemble_records(cv, [cv.fold(i) for i in range(k)])
    summary = summarize(cv)
    summary["calibration"] = calibrate_cv(cv)
    cv.write_summary(summary)
    return summary


def summarize(cv: CVFolder) -> dict:
    """Per-fold validation scores, their mean and sd, and the pooled out-of-fold scores."""
    from biomedseg.metrics.pixel import scores_from_confusion
    from biomedseg.workflows.comparison import training_summary

    info = cv.fold(0).dataset()
    records = [cv.fold_record(i) for i in range(cv.n_folds())]
    rows = []
    for i, rec in enumerate(records):
        training, _ = training_summary(cv.fold(i))
        rows.append(
            {
                "fold": i,
                "n_images": len(rec["ids"]),
                **{s: rec["scores"].get(s) for s in SUMMARY_SCORES},
                "per_class": rec["scores"].get("per_class"),
                **training,
            }
        )
    mean = {s: _mean_sd([r[s] for r in rows]) for s in SUMMARY_SCORES}
    pooled = scores_from_confusion(
        np.sum([np.asarray(r["confusion"]) for r in records], axis=0), info.classes, info.background
    )
    image_dice = [row["image_dice"] for r in records for row in r["rows"]]
    pooled.update({"image_dice": float(np.mean(image_dice)), "n_images": len(image_dice)})
    folds = cv.folds()
    out = {
        "k": len(records),
        "data": folds.get("data"),
        "n_pool": len(folds["pool"]),
        "n_test": len(folds["test"]),
        "tta": records[0].get("tta"),
        "folds": rows,
        "mean": {s: v[0] for s, v in mean.items()},
        "sd": {s: v[1] for s, v in mean.items()},
        "out_of_fold": pooled,
    }
    out.update(_field_summary(records, rows))
    return out


def _field_summary(records: list[dict], rows: list[dict]) -> dict:
    """The field metrics of the folds (records of older CVs have none): per fold, mean +/- sd over
    the folds, and out of fold (mean over every pool image)."""
    keys = _field_keys(records[0])
    if not keys or not all(r.get("field") for r in records):
        return {}
    for row, rec in zip(rows, records):
        row.update({k: rec["scores"].get(k) for k in keys})
    per_image = {k: [row.get(k) for r in records for row in r["rows"]] for k in keys}
    ms = {k: _mean_sd([r[k] for r in rows]) for k in keys}
    return {
        "field": records[0]["field"],
        "field_scores": {
            "mean": {k: v[0] for k, v in ms.items()},
            "sd": {k: v[1] for k, v in ms.items()},
            "out_of_fold": {k: _mean_sd(v)[0] for k, v in per_image.items()},
        },
    }


def _field_keys(record: dict) -> list[str]:
    """The field metric keys of a fold record (its ``scores`` beyond the pixel ones)."""
    from biomedseg.metrics.choice import GROUPS

    known = {k for g, keys in GROUPS.items() if g != "pixel" for k in keys}
    return [k for k in record.get("scores", {}) if k in known or any(k.startswith(f"{x}_") for x in known)]


def _mean_sd(values) -> tuple[float, float]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def format_summary(summary: dict) -> str:
    """The per-fold table, mean +/- sd and the pooled out-of-fold line of :func:`summarize`."""
    w = 14
    lines = [f"{'fold':>6s} {'images':>7s} " + " ".join(s.rjust(w) for s in SUMMARY_SCORES)]
    for r in summary["folds"]:
        lines.append(f"{r['fold']:>6d} {r['n_images']:>7d} " + " ".join(_num(r[s]).rjust(w) for s in SUMMARY_SCORES))
    lines.append(
        f"{'mean':>6s} {'+/- sd':>7s} "
        + " ".join(f"{_num(summary['mean'][s], 3)}+/-{_num(summary['sd'][s], 3)}".rjust(w) for s in SUMMARY_SCORES)
    )
    o = summary["out_of_fold"]
    lines.append(
        f"out-of-fold, pooled over {o['n_images']} training-pool images: "
        + "  ".join(f"{s} {_num(o.get(s))}" for s in SUMMARY_SCORES)
    )
    f = summary.get("field_scores")
    if f:
        lines.append(
            f"field metrics ({', '.join(summary['field']['groups'])}: {summary['field']['reason']}), "
            "mean +/- sd over folds [out of fold]:"
        )
        lines += [
            f"  {k:18s} {_num(f['mean'][k], 3)}+/-{_num(f['sd'][k], 3)}  [{_num(f['out_of_fold'][k])}]"
            for k in f["mean"]
        ]
    return "\n".join(lines)


def _num(x, digits: int = 4) -> str:
    return "nan" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"
