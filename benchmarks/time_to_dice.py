"""Test Dice reached within a time budget, per shared dataset, with the default plan.

    python benchmarks/time_to_dice.py --datasets isbi2012_em,drive_retina --budgets 5m,10m,30m

For each dataset and budget: ``train DATA --time-budget B`` then ``evaluate --split test``
(DRIVE inside its field-of-view masks). Prints one markdown row per run and, last, one result
line. Binary datasets report their target class; multi-class ones the mean and each class.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
TARGET = {
    "isbi2012_em": "membrane",
    "drive_retina": "vessel",
    "dsb2018_nuclei": "nucleus",
    "monuseg_histology": "nucleus",
}
REFERENCE = {
    "isbi2012_em": "plain MONAI U-Net loop, 10 CPU-min: membrane Dice 0.804; Otsu 0.53",
    "drive_retina": "U-Net vessel F1 0.814 (published)",
    "dsb2018_nuclei": "U-Net IoU about 0.9 (own split, published)",
}


def run_one(name: str, budget: str, workdir: Path, extra: dict) -> dict:
    import biomedseg

    data = SHARED / name
    run = workdir / f"{name}_{budget}"
    t0 = time.perf_counter()
    biomedseg.train(data, run, time_budget=budget, quiet=True, **extra)
    train_s = time.perf_counter() - t0
    valid = data / "fov" if (data / "fov").is_dir() else None
    t1 = time.perf_counter()
    m = biomedseg.evaluate(
        run, data, workdir / f"{name}_{budget}_eval", split="test", overlays=False, valid_dir=valid, quiet=True
    )
    eval_s = time.perf_counter() - t1
    per_class = {k: round(v["dice"], 4) for k, v in m["per_class"].items()}
    target = TARGET.get(name)
    score = per_class[target] if target else round(m["dice"], 4)
    return {
        "dataset": name,
        "budget": budget,
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "score": score,
        "score_name": f"{target} Dice" if target else "mean fg Dice",
        "per_class": per_class,
        "iou": round(m["iou"], 4),
        "f1": round(m["f1"], 4),
        "image_dice": round(m["image_dice"], 4),
        "reference": REFERENCE.get(name, ""),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--datasets", default="isbi2012_em,drive_retina,darkfield_bacteria,dsb2018_nuclei,monuseg_histology"
    )
    ap.add_argument("--budgets", default="5m,10m,30m")
    ap.add_argument("--workdir", default=None, help="keep runs here (default: a temporary folder)")
    ap.add_argument("--set", action="append", default=[], help="extra config key=value for every run")
    ap.add_argument("--json", default=None, help="append results as JSON lines to this file")
    args = ap.parse_args(argv)
    from biomedseg.runs.config import parse_overrides

    extra = parse_overrides(args.set)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="biomedseg_ttd_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print("| dataset | budget | train s | evaluate s | test score | per-class Dice | reference |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for name in args.datasets.split(","):
        if not (SHARED / name / "images").is_dir():
            print(f"skip {name}: not found under {SHARED}", file=sys.stderr)
            continue
        for budget in args.budgets.split(","):
            r = run_one(name, budget, workdir, extra)
            results.append(r)
            print(
                f"| {name} | {budget} | {r['train_s']} | {r['eval_s']} | {r['score_name']} {r['score']:.4f} | "
                f"{', '.join(f'{k} {v:.3f}' for k, v in r['per_class'].items())} | {r['reference']} |",
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print("RESULT " + "; ".join(f"{r['dataset']}@{r['budget']}: {r['score_name']} {r['score']:.4f}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
