"""A fine-tune (``train --init``) against training from scratch (issue 23).

    python benchmarks/finetune.py [--datasets dsb2018_nuclei,hc18_fetal_head] [--budget 15m]
                                  [--cross dsb2018_nuclei:monuseg_histology] [--workdir DIR] [--set key=value ...]

For each dataset:

(a) ``biomedseg.train`` on half of the training images (``dataset.json``'s train split, every other id)
    at ``--budget``, then ``train --init`` that run on all the training images for a third of the budget;
(b) ``biomedseg.train`` from scratch on all the training images at ``--budget``.

Both evaluated on the test split; the target is (a) within 0.005 Dice of (b) in a third of (b)'s
time. ``--lr-factors 1,0.2,0.05`` also fine-tunes at those multiples of the source's learning rate (the
default fine-tune uses ``warm_start.FINETUNE_LR_FACTOR``), to measure that choice. ``--cross SRC:DST`` also
starts DST from a full-budget run on SRC and compares it with DST from
scratch at the same short budget (a third of ``--budget``). Images and masks are symlinked (nothing of
the shared data is copied). Prints markdown rows and ``RESULT`` lines; ``--workdir`` reuses finished runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
DATASETS = "dsb2018_nuclei,hc18_fetal_head"


def half_data(data: Path, out: Path) -> Path:
    """``data`` with every other training id (images and masks symlinked, the test split kept)."""
    if (out / "dataset.json").is_file():
        return out
    meta = json.loads((data / "dataset.json").read_text())
    split = meta.get("split") or {}
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks"):
        if not (out / sub).exists():
            (out / sub).symlink_to((data / sub).resolve())
    meta["split"] = {"train": sorted(split["train"])[::2], "test": split.get("test", [])}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return out


def seconds(budget: str) -> float:
    from biomedseg.runs.config import parse_duration

    return parse_duration(budget)


def trained(data: Path, run: Path, budget_s: float, extra: dict, init: Path | None = None) -> Path:
    from biomedseg.runs import RunFolder
    from biomedseg.training.api import train

    if RunFolder(run).paths.curves.is_file():
        return run
    return train(data, run, time_budget=budget_s, quiet=True, init=init, **extra)


def scored(run: Path, data: Path) -> tuple[float, float]:
    """``(test Dice, trained seconds)``."""
    from biomedseg.runs import open_run
    from biomedseg.workflows.comparison import training_summary
    from biomedseg.workflows.evaluation import evaluate

    dice = float(evaluate(run, data, run / "eval_test", split="test", quiet=True)["dice"])
    return dice, float(training_summary(open_run(run))[0]["seconds"] or float("nan"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--budget", default="15m")
    ap.add_argument("--cross", default="", help="SRC:DST pairs, comma-separated")
    ap.add_argument("--lr-factors", default="", help="also fine-tune at these multiples of the source's lr")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    from cpu_class import cpu_fields  # the CPU model and bf16/AMX/VNNI flags of the RESULT lines

    cpu = cpu_fields()
    from biomedseg.runs.config import parse_overrides

    extra, b = parse_overrides(args.set), seconds(args.budget)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="biomedseg_finetune_"))
    print(
        "| dataset | budget | half-data source | fine-tune (+1/3 budget) | from scratch | fine-tune - scratch | "
        "trained s (fine-tune / scratch) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in [n for n in args.datasets.split(",") if n]:
        data = SHARED / name
        if not (data / "images").is_dir():
            print(f"skip {name}: not found under {SHARED}", file=sys.stderr)
            continue
        src = trained(half_data(data, work / name / "half"), work / name / "source", b, extra)
        ft = trained(data, work / name / "finetune", b / 3, extra, init=src)
        scratch = trained(data, work / name / "scratch", b, extra)
        (d_src, _), (d_ft, s_ft), (d_sc, s_sc) = scored(src, data), scored(ft, data), scored(scratch, data)
        print(
            f"| {name} | {args.budget} | {d_src:.4f} | {d_ft:.4f} | {d_sc:.4f} | {d_ft - d_sc:+.4f} | "
            f"{s_ft:.0f} / {s_sc:.0f} |",
            flush=True,
        )
        print(
            f"RESULT finetune dataset={name} budget={args.budget} source_half_dice={d_src:.4f} "
            f"finetune_dice={d_ft:.4f} "
            f"scratch_dice={d_sc:.4f} difference={d_ft - d_sc:+.4f} time_ratio={s_ft / s_sc:.2f}{cpu}",
            flush=True,
        )
        lr = float(yaml.safe_load((src / "config.yaml").read_text())["lr"])
        for f in [float(x) for x in args.lr_factors.split(",") if x]:
            run = trained(data, work / name / f"finetune_lr{f:g}", b / 3, {**extra, "lr": lr * f}, init=src)
            print(
                f"RESULT finetune_lr dataset={name} budget={args.budget} lr_factor={f:g} "
                f"finetune_dice={scored(run, data)[0]:.4f} scratch_dice={d_sc:.4f}{cpu}",
                flush=True,
            )
    for pair in [p for p in args.cross.split(",") if p]:
        a, d = pair.split(":")
        src = trained(SHARED / a, work / f"cross_{a}" / "source", b, extra)
        ft = trained(SHARED / d, work / f"cross_{a}_{d}" / "finetune", b / 3, extra, init=src)
        scratch = trained(SHARED / d, work / f"cross_{a}_{d}" / "scratch", b / 3, extra)
        (d_ft, _), (d_sc, _) = scored(ft, SHARED / d), scored(scratch, SHARED / d)
        print(
            f"RESULT finetune_cross source={a} target={d} budget={b / 3:.0f}s init_dice={d_ft:.4f} "
            f"scratch_dice={d_sc:.4f} difference={d_ft - d_sc:+.4f}{cpu}",
            flush=True,
        )
    print(f"workdir: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
