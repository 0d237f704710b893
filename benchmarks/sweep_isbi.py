"""The optimizer x learning-rate table of the seed ISBI project, as a ``biomedseg sweep``.

    python benchmarks/sweep_isbi.py [--budget-per-trial 3m] [--out SWEEP] [--trials N] [--scheduler local:2]

4 optimizers (adam, adamw, sgd, rmsprop) x 3 learning rates on ``../shared/datasets/isbi2012_em``,
each trial trained for the same wall-clock budget with the plan made once and the same seed, no
pruning (every cell of the table trained in full), then evaluated on the test split. Prints the
table (membrane Dice and pixel accuracy on the test images, best validation Dice, steps) and, last,
one RESULT line. Pixel accuracy is reported beside Dice to show how little it says on this data:
the majority class (cell interior) is ~78% of the pixels, so even a poor model scores ~0.9.
Run again with the same ``--out`` to continue an interrupted table. ``--scheduler`` trains the trials
as jobs on a Dask cluster (``local:2``: two worker processes of one thread each on this machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "datasets" / "isbi2012_em"
OPTIMIZERS = "adam,adamw,sgd,rmsprop"
LEARNING_RATES = "1e-4,1e-3,1e-2"
TARGET = "membrane"


def _f(value, digits: int = 4) -> str:
    return "n/a" if value in (None, "") else f"{float(value):.{digits}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-per-trial", default="3m", help="training time of each trial (default 3m)")
    ap.add_argument("--optimizers", default=OPTIMIZERS)
    ap.add_argument("--lrs", default=LEARNING_RATES, help="learning rates, comma-separated")
    ap.add_argument("--trials", type=int, default=None, help="stop after this many trials (a smoke run)")
    ap.add_argument("--out", default=None, help="sweep folder (default: a temporary folder)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--set", action="append", default=[], help="extra config key=value for every trial")
    ap.add_argument(
        "--scheduler", default=None, help="Dask cluster for the trials: tcp://host:port, a scheduler file, or local:N"
    )
    args = ap.parse_args(argv)
    from biomedseg.runs.config import parse_overrides
    from biomedseg.sweeps.run import sweep

    if not (Path(args.data) / "images").is_dir():
        print(f"skip: {args.data} not found", file=sys.stderr)
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="biomedseg_sweep_isbi_")) / "sweep"
    s = sweep(
        args.data,
        out,
        [f"optimizer={args.optimizers}", f"lr={args.lrs}"],
        trials=args.trials,
        time_budget_per_trial=args.budget_per_trial,
        test=True,
        prune=False,
        quiet=True,
        scheduler=args.scheduler,
        **parse_overrides(args.set),
    )
    rows = [r for r in s["rows"] if r["state"] == "complete"]
    print(f"| optimizer | lr | test {TARGET} Dice | test pixel accuracy | best val Dice | steps | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['optimizer']} | {r['lr']} | {_f(r.get(f'test_dice_{TARGET}'))} | "
            f"{_f(r.get('test_pixel_accuracy'))} | {_f(r.get('val_dice'))} | {r.get('steps')} | {r.get('seconds')} |"
        )
    print(f"table: {s['table']}")
    dice = [r.get(f"test_dice_{TARGET}") for r in rows if r.get(f"test_dice_{TARGET}") is not None]
    acc = [r.get("test_pixel_accuracy") for r in rows if r.get("test_pixel_accuracy") is not None]
    if not rows or not dice:
        print(f"RESULT sweep isbi2012_em@{args.budget_per_trial}/trial: no finished trial")
        return 1
    best = rows[0]  # best validation Dice first
    print(
        f"RESULT sweep isbi2012_em@{args.budget_per_trial}/trial: {len(rows)} trials; best by validation: "
        f"{best['optimizer']} lr={best['lr']} test {TARGET} Dice {_f(best.get(f'test_dice_{TARGET}'))}, pixel "
        f"accuracy {_f(best.get('test_pixel_accuracy'))}; across trials {TARGET} Dice {min(dice):.4f}-"
        f"{max(dice):.4f}, pixel accuracy {min(acc):.4f}-{max(acc):.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
