"""``biomedseg compare``: several runs evaluated on the same images, compared honestly.

Each run needs an evaluation (a folder written by :func:`biomedseg.workflows.evaluation.evaluate`:
``metrics.json`` and ``per_image.csv``) on the same split of the same data:

- given explicitly (``evaluations={RUN: EVALDIR}``, CLI ``--eval RUN=EVALDIR``), or
- ``OUT/evals/<run name>/`` written by an earlier ``compare`` into the same ``OUT`` and still
  current (same run, split and data; newer than the run's checkpoint and post-processing), or
- written there now by ``evaluate`` (without overlay pictures).

Runs must have the same classes and be evaluated on the same image ids of the same data (a one-line
:class:`UserError` otherwise). Per-image Dice (``image_dice``), or any other ``per_image.csv`` column
named by ``metric`` (``--metric aji``, ``hd95``, ...: evaluations lacking it are redone with that
metric's group; for distances and errors lower is better, so their differences are taken the
other way round), of each run against a baseline (or every pair) goes through
:func:`biomedseg.core.stats.paired_bootstrap`; the report is written by
:mod:`biomedseg.reports.compare`, plus ``OUT/compare.json`` with the numbers.

Members are run folders, cross-validation folders (the ensemble of their folds) or ensemble folders
(:func:`open_member`); the training time and steps of the latter two are summed over their member
runs (:func:`training_summary`). Sweep trials are run folders.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from biomedseg.core.errors import UserError
from biomedseg.core.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    FEW_IMAGES,
    difference_sentence,
    paired_bootstrap,
)
from biomedseg.io.writers import write_text
from biomedseg.runs import RunFolder, open_run

log = logging.getLogger("biomedseg")

DEFAULT_SPLIT = "test"
PAIRS = ("baseline", "all")  # each run against the baseline, or every pair
EVALS_DIR = "evals"
RESULT_NAME = "compare.json"
EVAL_METRICS = "metrics.json"  # what evaluate writes
EVAL_PER_IMAGE = "per_image.csv"
SCORE = "image_dice"  # per-image score compared: mean Dice over the foreground classes of one image


@dataclass
class Member:
    """One run being compared: its folder, evaluation folder, ``metrics.json`` and per-image Dice
    (``scores``: image id -> ``image_dice``, in the evaluation's order)."""

    name: str
    run: RunFolder
    eval_dir: Path
    metrics: dict
    scores: dict[str, float]


# --------------------------------------------------------------------------------- the members
def open_member(path) -> RunFolder:
    """The run, CV or ensemble folder at ``path`` (a one-line :class:`UserError` when it is none);
    :func:`biomedseg.inference.run.load_run` gives the ensemble of the latter two when evaluated."""
    return open_run(path)


def open_members(paths: Sequence) -> list[RunFolder]:
    """Open the folders to compare; refuse fewer than 2, one given twice, or classes that differ."""
    if len(paths) < 2:
        raise UserError(f"compare: needs at least 2 run folders, got {len(paths)}")
    runs = [open_member(p) for p in paths]
    seen: dict[Path, RunFolder] = {}
    for run in runs:
        key = run.root.resolve()
        if key in seen:
            raise UserError(f"{run.root}: given twice")
        seen[key] = run
    first = runs[0].dataset().classes
    for run in runs[1:]:
        classes = run.dataset().classes
        if classes != first:
            raise UserError(
                f"{run.root}: classes {classes} differ from {runs[0].root}'s {first}; "
                "only runs with the same classes can be compared"
            )
    return runs


def member_names(runs: Sequence[RunFolder]) -> list[str]:
    """Short unique names: the folder name, with its parent's name (then a number) when two clash."""
    from biomedseg.runs.ensemble import folder_names

    return folder_names(list(runs))


def _find(name_or_path, runs: Sequence[RunFolder], names: Sequence[str], what: str) -> int:
    for i, (run, name) in enumerate(zip(runs, names)):
        if str(name_or_path) == name or Path(name_or_path).resolve() == run.root.resolve():
            return i
    raise UserError(f"{what} {name_or_path}: not one of the runs compared ({', '.join(names)})")


# ----------------------------------------------------------------------------- the evaluations
def read_evaluation(eval_dir, score: str = SCORE) -> tuple[dict, dict[str, float]]:
    """``(metrics.json, {image id: score})`` of an evaluation folder (``score``: a per-image column)."""
    from biomedseg.training.curves import to_float

    eval_dir = Path(eval_dir)
    metrics_path, rows_path = eval_dir / EVAL_METRICS, eval_dir / EVAL_PER_IMAGE
    for path in (metrics_path, rows_path):
        if not path.is_file():
            raise UserError(f"{eval_dir}: not an evaluation folder of `biomedseg evaluate` (no {path.name})")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        with open(rows_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, ValueError, csv.Error) as exc:
        raise UserError(f"{eval_dir}: cannot read the evaluation ({str(exc).splitlines()[0]})") from None
    if rows and ("id" not in rows[0] or score not in rows[0]):
        hint = f" (evaluate with --metrics {score})" if score != SCORE else ""
        raise UserError(f"{rows_path}: no 'id' and {score!r} columns{hint}")
    scores = {row["id"]: to_float(row[score]) for row in rows}
    bad = [i for i, v in scores.items() if math.isnan(v)]
    if bad:
        raise UserError(f"{rows_path}: image {bad[0]} has no {score}")
    return metrics, scores


def _same_path(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def is_current(eval_dir: Path, run: RunFolder, split: str, data, score: str = SCORE) -> bool:
    """True when ``eval_dir`` holds an evaluation of ``run`` on ``split`` of ``data`` (default the run's
    training data) newer than the run's best checkpoint (a CV's or ensemble's: its members') and
    post-processing."""
    try:
        metrics, _ = read_evaluation(eval_dir, score)
    except UserError:
        return False
    if metrics.get("split") != split or not _same_path(metrics.get("run"), run.root):
        return False
    if not _same_path(metrics.get("data"), data if data is not None else run.dataset().source):
        return False
    written = (eval_dir / EVAL_METRICS).stat().st_mtime
    inputs = [p for p in (*_checkpoints(run), run.paths.postprocess) if p.is_file()]
    return all(p.stat().st_mtime <= written for p in inputs)


def _checkpoints(run: RunFolder) -> list[Path]:
    """The best checkpoints behind ``run``: its own, or its member runs' (CV or ensemble folder)."""
    if run.info().kind == "run":
        return [run.checkpoint_path("best")]
    from biomedseg.runs.ensemble import ensemble_members

    return [leaf.checkpoint_path("best") for leaf, _ in ensemble_members(run)]


def evaluation_of(
    run: RunFolder, name: str, out: Path, split: str, data, given, device, quiet, score: str = SCORE
) -> Path:
    """The evaluation folder of ``run``: ``given``, a current ``OUT/evals/<name>`` holding ``score``,
    or a new one (with ``score``'s metric group when it is a field metric)."""
    if given is not None:
        metrics, _ = read_evaluation(given, score)
        if metrics.get("split") != split:
            raise UserError(f"{given}: an evaluation on the {metrics.get('split')!r} split, not {split!r}")
        if not _same_path(metrics.get("run"), run.root):
            log.warning("%s: evaluated run %s, compared as %s", given, metrics.get("run"), run.root)
        return Path(given)
    eval_dir = out / EVALS_DIR / name
    if is_current(eval_dir, run, split, data, score):
        log.info("%s: reusing the evaluation in %s", name, eval_dir)
        return eval_dir
    from biomedseg.workflows.evaluation import evaluate

    log.info("%s: evaluating on the %s split -> %s", name, split, eval_dir)
    kwargs = {"device": device} if device else {}
    if score != SCORE:
        kwargs["metrics"] = metric_group(score)
    evaluate(run.root.resolve(), data, out=eval_dir, split=split, overlays=False, quiet=quiet, **kwargs)
    return eval_dir


def metric_group(score: str) -> str:
    """The ``--metrics`` value that computes the per-image column ``score`` (``hd95_um``, ``aji_nucleus`` ...)."""
    from biomedseg.metrics.choice import GROUPS

    hits = [(k, g) for g, keys in GROUPS.items() for k in keys if score == k or score.startswith(k + "_")]
    hits += [(k, "boundary") for k in ("hd95_um", "assd_um") if score.startswith(k)]
    if not hits:
        raise UserError(
            f"--metric {score}: not a per-image metric (image_dice, dice_<class>, or one of "
            f"{', '.join(k for keys in list(GROUPS.values())[1:] for k in keys)})"
        )
    return max(hits, key=lambda h: len(h[0]))[1]


def common_images(members: Sequence[Member]) -> list[str]:
    """The image ids every member was evaluated on (the first member's order); a :class:`UserError`
    when the members' evaluations differ in data folder or images."""
    first = members[0]
    for m in members[1:]:
        if not _same_path(m.metrics.get("data"), first.metrics.get("data")):
            raise UserError(
                f"{m.eval_dir}: evaluated on {m.metrics.get('data')}, {first.name} on "
                f"{first.metrics.get('data')}; compare needs one data folder (--data DATA)"
            )
        if set(m.scores) != set(first.scores):
            common = len(set(m.scores) & set(first.scores))
            raise UserError(
                f"{m.eval_dir}: {len(m.scores)} images, {first.name}'s evaluation {len(first.scores)} "
                f"({common} in common); compare needs the same images (same --data and --split)"
            )
    return list(first.scores)


# ------------------------------------------------------------------------------ what differs
def flatten(values: Mapping, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_settings(configs: Sequence[Mapping]) -> list[tuple[str, list]]:
    """``(option, [value per config])`` for the options whose values differ (missing = ``None``)."""
    flat = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    rows = []
    for key in keys:
        values = [f.get(key) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, [v if isinstance(v, (int, float, str)) or v is None else str(v) for v in values]))
    return rows


def lineage_rows(members: Sequence[Member]) -> list[tuple[str, list]]:
    """``[("started from (--init)", [parent per run])]`` when a run was started from another (the parent's
    name, marked "(compared here)" when it is one of the runs), else ``[]``."""
    parents = []
    for m in members:
        parent = getattr(m.run.info(), "parent", None) or None
        parents.append(parent)
    if not any(parents):
        return []
    roots = {str(m.run.root.resolve()): m.name for m in members}
    cells = []
    for p in parents:
        if not p:
            cells.append(None)
            continue
        here = roots.get(str(p.get("path")))
        cells.append(
            f"{here} (compared here)"
            if here
            else f"{p.get('run')} ({p.get('checkpoint')}, sha256 {str(p.get('sha256'))[:12]})"
        )
    return [("started from (--init)", cells)]


def training_summary(run: RunFolder) -> tuple[dict, dict | None]:
    """``({seconds, steps, epochs, best_val_dice}, curves)`` from the run's training log; values are
    ``None`` (and curves ``None``) when the run has no log. A CV or ensemble folder: seconds, steps
    and epochs summed over its member runs, their mean best validation Dice, no curves."""
    from biomedseg.training.curves import read_metrics_csv

    if run.info().kind != "run":
        return _members_summary(run), None
    if not run.paths.metrics.is_file():
        return dict.fromkeys(("seconds", "steps", "epochs", "best_val_dice")), None
    curves = read_metrics_csv(run.paths.metrics)

    def last(column):
        values = [v for v in curves.get(column, []) if not math.isnan(v)]
        return values[-1] if values else None

    dice = [v for v in curves.get("val_dice", []) if not math.isnan(v)]
    steps, epochs = last("iteration"), last("epoch")
    return {
        "seconds": last("seconds"),
        "steps": int(steps) if steps is not None else None,
        "epochs": int(epochs) if epochs is not None else None,
        "best_val_dice": max(dice) if dice else None,
    }, curves


def _members_summary(folder: RunFolder) -> dict:
    from biomedseg.runs.ensemble import ensemble_members

    parts = [training_summary(leaf)[0] for leaf, _ in ensemble_members(folder)]
    out = {}
    for key in ("seconds", "steps", "epochs"):
        values = [p[key] for p in parts if p[key] is not None]
        out[key] = sum(values) if values else None
    dice = [p["best_val_dice"] for p in parts if p["best_val_dice"] is not None]
    out["best_val_dice"] = sum(dice) / len(dice) if dice else None
    return out


def pairs_to_compare(names: Sequence[str], baseline: int, mode: str) -> list[tuple[int, int]]:
    """Index pairs ``(a, b)``: each run against ``baseline``, or (``mode="all"``) every pair."""
    if mode not in PAIRS:
        raise UserError(f"--pairs {mode}: expected one of {', '.join(PAIRS)}")
    if mode == "all":
        return [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    return [(baseline, j) for j in range(len(names)) if j != baseline]


def method_note(n: int, n_resamples: int, seed: int, confidence: float, n_pairs: int, score: str = SCORE) -> str:
    from biomedseg.metrics.field import metric_direction

    alpha = 1.0 - confidence
    what = (
        (
            f"per-image Dice ({SCORE}: the mean Dice over the foreground classes of one image; pooled Dice in the "
            "metrics table can rank runs differently)"
        )
        if score == SCORE
        else (
            f"per-image {score} (lower is better: the difference is taken A - B, so positive favours B)"
            if metric_direction(score) == "lower"
            else f"per-image {score}"
        )
    )
    text = (
        f"Paired bootstrap over the {n} images: image indices drawn with replacement {n_resamples} times "
        f"(seed {seed}), the same images for both runs; the interval is the {confidence * 100:g}% BCa "
        f"interval of the mean difference of {what}; p is the two-sided "
        "bootstrap p-value. The interval covers the image-to-image noise of these images, not the randomness "
        "of training: two seeds of one configuration differ too."
    )
    if n_pairs > 1:
        text += (
            f" Each interval excludes 0 by chance {alpha * 100:g}% of the time when two runs do not differ: "
            f"over {n_pairs} comparisons expect about {n_pairs * alpha:.2g} such false alarms."
        )
    if n < FEW_IMAGES:
        text += f" With fewer than {FEW_IMAGES} images a bootstrap interval is too narrow: read it with care."
    return text


# ------------------------------------------------------------------------------------ compare
def compare(
    runs: Sequence,
    out,
    *,
    data=None,
    split: str = DEFAULT_SPLIT,
    evaluations: Mapping | None = None,
    baseline=None,
    pairs: str = PAIRS[0],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    device: str | None = None,
    quiet: bool = False,
    metric: str = SCORE,
) -> dict:
    """Compare run folders ``runs`` on ``split`` of ``data`` (default: each run's training data).

    ``evaluations``: ``{run path or name: evaluation folder}`` to reuse; the others are evaluated
    into ``out/evals/<name>/`` (see the module docstring). ``baseline``: run path or name (default
    the first). ``pairs``: ``"baseline"`` (each run against it) or ``"all"``. ``metric``: the
    per-image column compared (default ``image_dice``). Writes
    ``out/compare.md``, ``out/compare.html`` and ``out/compare.json``; returns the latter's content.
    """
    if not 0.0 < confidence < 1.0:
        raise UserError(f"--confidence {confidence}: expected a number between 0 and 1")
    if n_resamples < 1:
        raise UserError(f"--resamples {n_resamples}: expected at least 1")
    if metric != SCORE and not metric.startswith("dice_"):
        metric_group(metric)  # a bad name fails before anything is evaluated
    folders = open_members(runs)
    names = member_names(folders)
    base = _find(baseline, folders, names, "--baseline") if baseline is not None else 0
    index_pairs = pairs_to_compare(names, base, pairs)
    given = {_find(k, folders, names, "--eval"): Path(v) for k, v in (evaluations or {}).items()}
    out = Path(out)
    members = []
    for i, (run, name) in enumerate(zip(folders, names)):
        eval_dir = evaluation_of(run, name, out, split, data, given.get(i), device, quiet, metric)
        members.append(Member(name, run, eval_dir, *read_evaluation(eval_dir, metric)))
    ids = common_images(members)
    comparisons = [
        _compare_pair(members[a], members[b], ids, metric, n_resamples, seed, confidence) for a, b in index_pairs
    ]
    summary = {
        "split": split,
        "data": members[0].metrics.get("data"),
        "n_images": len(ids),
        "score": metric,
        "baseline": names[base] if pairs == "baseline" else None,
        "runs": [{"name": m.name, "run": str(m.run.root), "evaluation": str(m.eval_dir)} for m in members],
        "comparisons": comparisons,
    }
    md, page = _write_report(
        out, members, ids, summary, method_note(len(ids), n_resamples, seed, confidence, len(comparisons), metric)
    )
    summary.update({"markdown": str(md), "html": str(page)})
    write_text(out / RESULT_NAME, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def _compare_pair(ma: Member, mb: Member, ids, metric: str, n_resamples: int, seed: int, confidence: float) -> dict:
    """Paired bootstrap of ``b - a`` on ``metric``; for a lower-is-better metric on ``a - b``, so that a
    positive difference always means ``b`` is better (``"direction"`` says which)."""
    from biomedseg.metrics.field import metric_direction

    sign = -1.0 if metric_direction(metric) == "lower" else 1.0
    result = paired_bootstrap(
        [sign * ma.scores[i] for i in ids],
        [sign * mb.scores[i] for i in ids],
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )
    label = "Dice" if metric == SCORE else (metric + (" (lower is better)" if sign < 0 else ""))
    return {
        "a": ma.name,
        "b": mb.name,
        **result,
        "direction": "lower" if sign < 0 else "higher",
        "sentence": difference_sentence(result, ma.name, mb.name, metric=label),
    }


def _write_report(out: Path, members: Sequence[Member], ids: Sequence[str], summary: dict, method: str):
    """Build the plain data of :class:`~biomedseg.reports.compare.CompareReport` and write it."""
    from biomedseg.reports.compare import CompareReport, Comparison, RunColumn, write_compare_report

    columns = []
    for m in members:
        training, curves = training_summary(m.run)
        columns.append(RunColumn(m.name, str(m.run.root), str(m.eval_dir), m.metrics, training, curves))
    report = CompareReport(
        title=f"biomedseg comparison: {', '.join(m.name for m in members)}",
        split=summary["split"],
        data=str(summary["data"]),
        runs=columns,
        settings=lineage_rows(members) + differing_settings([m.run.config_values() for m in members]),
        image_ids=list(ids),
        image_dice={m.name: [m.scores[i] for i in ids] for m in members},
        score=summary["score"],
        comparisons=[Comparison(c["a"], c["b"], c, c["sentence"]) for c in summary["comparisons"]],
        method=method,
    )
    return write_compare_report(out, report)
