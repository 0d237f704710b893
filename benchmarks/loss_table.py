"""Losses compared on darkfield_bacteria (rare spirochaetes: ~1.3% of the pixels).

    python benchmarks/loss_table.py --budget 5m
    python benchmarks/loss_table.py --budget 5m --losses tversky     # one loss per invocation
    python benchmarks/loss_table.py --table-only

Same model (default ``unet``), same budget and seed for every row; only the loss (and, for
``ce-inverse``, ``class_weights="inverse"``) changes. Results are cached per row in
``WORKDIR/<dataset>/<row>/result.json`` like ``model_zoo.py``. Prints test Dice per class and
precision/recall of the rarest class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_zoo import SHARED, _fmt, train_and_evaluate  # noqa: E402

#: row label -> config overrides
ROWS: dict[str, dict] = {
    "ce": {"loss": "ce"},
    "ce-inverse": {"loss": "ce", "class_weights": "inverse"},
    "dice+ce": {"loss": "dice+ce"},
    "focal+dice": {"loss": "focal+dice"},
    "tversky": {"loss": "tversky:alpha=0.3,beta=0.7"},
}


def print_table(dataset: str, results: list[dict], rare: str | None) -> None:
    classes = list(results[0]["per_class"])
    print(f"\n### {dataset}: losses ({results[0]['model']}, {results[0]['budget']} each)\n")
    head = "| loss | class weights | epochs | " + " | ".join(f"Dice {c}" for c in classes)
    if rare:
        head += f" | precision {rare} | recall {rare}"
    print(head + " |")
    print("|---|---|---:|" + "---:|" * (len(classes) + (2 if rare else 0)))
    for r in results:
        row = f"| {r['loss']} | {r['class_weights']} | {r['epochs']} | " + " | ".join(
            _fmt(r["per_class"][c]["dice"], ".4f") for c in classes
        )
        if rare:
            pc = r["per_class"][rare]
            row += f" | {_fmt(pc['precision'], '.4f')} | {_fmt(pc['recall'], '.4f')}"
        print(row + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="5m", help="training time per loss (default 5m)")
    ap.add_argument("--losses", default=",".join(ROWS), help=f"rows to run (default all: {', '.join(ROWS)})")
    ap.add_argument("--dataset", default="darkfield_bacteria")
    ap.add_argument("--model", default="unet")
    ap.add_argument("--workdir", default="runs/loss_table", help="results are kept (and reused) here")
    ap.add_argument("--set", action="append", default=[], help="extra config key=value for every run")
    ap.add_argument("--force", action="store_true", help="redo rows that already have a result")
    ap.add_argument("--table-only", action="store_true", help="only print the collected results")
    args = ap.parse_args(argv)
    from biomedseg.runs.config import parse_overrides

    rows = args.losses.split(",")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if not (SHARED / args.dataset / "images").is_dir():
        ap.error(f"{args.dataset}: not found under {SHARED}")
    extra = parse_overrides(args.set)
    workdir = Path(args.workdir)
    results = []
    for label in rows:
        result_file = workdir / args.dataset / label / "result.json"
        if args.table_only:
            if result_file.is_file():
                results.append(json.loads(result_file.read_text()))
            continue
        print(f"{args.dataset}: training {args.model} with {label} for {args.budget} ...", file=sys.stderr, flush=True)
        results.append(
            train_and_evaluate(
                args.dataset, label, workdir, args.budget, args.force, **{"model": args.model, **extra, **ROWS[label]}
            )
        )
    if results:
        meta = json.loads((SHARED / args.dataset / "dataset.json").read_text())
        share = meta.get("class_pixel_fraction", {})
        fg = {k: v for k, v in share.items() if k != "background"}
        print_table(args.dataset, results, min(fg, key=fg.get) if fg else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
