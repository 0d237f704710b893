"""One run of the default plan against a k-fold CV ensemble at the same total training budget.

    python benchmarks/cv_ensemble.py [--datasets monuseg_histology,darkfield_bacteria,dsb2018_nuclei]
                                     [--budget 30m] [--folds 5] [--workdir DIR] [--set key=value ...]

For each dataset (issue 16):

(a) ``biomedseg train DATA --time-budget B`` (the default plan, ``dataset.json``'s split);
(b) ``biomedseg cv DATA --folds K --time-budget B`` (B in total, B/K per fold, one shared plan;
    the test split stays out of the folds), used as the ensemble of its folds;

then ``biomedseg compare A B --split test``: both evaluated on the test split, and the paired
bootstrap of the per-image Dice difference (B - A) with its 95% interval. Prints one markdown row
and one ``RESULT`` line per dataset. With ``--workdir`` finished runs are reused (the CV resumes),
so an interrupted benchmark continues where it stopped. ``--sides single`` / ``--sides cv`` train one side only
(no comparison): two such processes with ``--set num_threads=1`` on one ``--workdir`` train both sides at
once on a 2-core machine, one core each; a last call with the default ``--sides both`` then only compares.
"trained s" is the training time the
trainer counted (a CV: summed over its folds; a run trains at least one epoch, so tiny budgets
overshoot); "wall s" the whole command (the CV's audit, plan and out-of-fold predictions included;
evaluations excluded).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
DATASETS = "monuseg_histology,darkfield_bacteria,dsb2018_nuclei"


def single_run(data: Path, run: Path, budget: str, extra: dict) -> float:
    """Train the single run (skipped when ``run`` already holds a finished one); wall seconds."""
    from biomedseg.runs import RunFolder
    from biomedseg.training.api import train

    if RunFolder(run).has_checkpoint("last") and RunFolder(run).paths.curves.is_file():
        return float("nan")
    t0 = time.perf_counter()
    train(data, run, time_budget=budget, quiet=True, **extra)
    return time.perf_counter() - t0


def test_dice(eval_dir: Path) -> float:
    """Mean foreground Dice (pooled) of an evaluation folder."""
    from biomedseg.workflows.comparison import read_evaluation

    return float(read_evaluation(eval_dir)[0]["dice"])


def trained_seconds(folder: Path) -> float:
    """Training seconds counted by the trainer (``metrics.csv``; a CV: summed over its folds)."""
    from biomedseg.runs import open_run
    from biomedseg.workflows.comparison import training_summary

    seconds = training_summary(open_run(folder))[0]["seconds"]
    return float("nan") if seconds is None else float(seconds)


def run_dataset(name: str, budget: str, folds: int, workdir: Path, extra: dict, sides: str = "both") -> dict | None:
    from biomedseg.workflows.comparison import compare
    from biomedseg.workflows.crossval import cross_validate

    data = SHARED / name
    single, cv = workdir / name / "single", workdir / name / "cv"
    single_s = single_run(data, single, budget, extra) if sides != "cv" else float("nan")
    t0 = time.perf_counter()
    summary = (
        cross_validate(data, cv, folds=folds, time_budget=budget, quiet=True, **extra) if sides != "single" else None
    )
    cv_s = time.perf_counter() - t0
    if sides != "both":
        print(f"{name}: {sides} side trained ({single_s if sides == 'single' else cv_s:.0f} s)", flush=True)
        return None
    result = compare([single, cv], workdir / name / "compare", split="test", quiet=True)
    c = result["comparisons"][0]
    evals = {r["name"]: Path(r["evaluation"]) for r in result["runs"]}
    return {
        "dataset": name,
        "budget": budget,
        "folds": folds,
        "n_test": result["n_images"],
        "single_dice": test_dice(evals["single"]),
        "cv_dice": test_dice(evals["cv"]),
        "difference": c["mean_difference"],
        "low": c["low"],
        "high": c["high"],
        "p": c["p_value"],
        "oof_dice": summary["out_of_fold"]["dice"],
        "fold_dice_sd": summary["sd"]["dice"],
        "single_s": single_s,
        "cv_s": cv_s,
        "single_trained_s": trained_seconds(single),
        "cv_trained_s": trained_seconds(cv),
        "sentence": c["sentence"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--budget", default="30m", help="total training time of each side, e.g. 30m")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--workdir", default=None, help="keep runs here and reuse them (default: a temporary folder)")
    ap.add_argument(
        "--sides",
        choices=["both", "single", "cv"],
        default="both",
        help="train one side only (see above); both: train what is missing, then compare",
    )
    ap.add_argument("--set", action="append", default=[], help="extra training option key=value (both sides)")
    args = ap.parse_args(argv)
    from biomedseg.runs.config import parse_overrides

    extra = parse_overrides(args.set)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="biomedseg_cv_ensemble_"))
    print(
        "| dataset | budget | test images | single run Dice | CV ensemble Dice | CV - single (image Dice, 95% CI) "
        "| out-of-fold Dice | sd over folds | trained s (single / CV) | wall s (single / CV) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        if not (SHARED / name / "images").is_dir():
            print(f"skip {name}: not found under {SHARED}", file=sys.stderr)
            continue
        r = run_dataset(name, args.budget, args.folds, workdir, extra, args.sides)
        if r is None:
            continue
        print(
            f"| {name} | {r['budget']} | {r['n_test']} | {r['single_dice']:.4f} | {r['cv_dice']:.4f} | "
            f"{r['difference']:+.4f} ({r['low']:+.4f} to {r['high']:+.4f}) | {r['oof_dice']:.4f} | "
            f"{r['fold_dice_sd']:.4f} | {r['single_trained_s']:.0f} / {r['cv_trained_s']:.0f} | "
            f"{r['single_s']:.0f} / {r['cv_s']:.0f} |",
            flush=True,
        )
        print(f"  {r['sentence']}")
        print(
            f"RESULT cv_ensemble dataset={name} budget={r['budget']} folds={r['folds']} test_images={r['n_test']} "
            f"single_dice={r['single_dice']:.4f} cv_ensemble_dice={r['cv_dice']:.4f} "
            f"image_dice_difference={r['difference']:+.4f} ci95=[{r['low']:+.4f},{r['high']:+.4f}] "
            f"p={r['p']:.3f} oof_dice={r['oof_dice']:.4f} trained_s={r['single_trained_s']:.0f}/"
            f"{r['cv_trained_s']:.0f}",
            flush=True,
        )
    print(f"workdir: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
