"""Scribble labels against full labels at the same training budget (issue 23).

    python benchmarks/scribbles.py [--datasets isbi2012_em,...] [--budget 5m] [--fraction 0.05]
                                   [--workdir DIR] [--set key=value ...] [--together]

For each shared dataset, its training masks become scribbles (:func:`scribble_mask`): strokes along the
skeleton of every object and of the background, a pixel wide on each side, thinned at random to about
``--fraction`` of the pixels; every other pixel is 255, declared as ``"ignore_value": 255`` in the
scribble copy's ``dataset.json`` (the images are symlinked, nothing of the shared data is copied into
the project). Then ``biomedseg.train`` with its default plan, at the same ``--budget``, on the full masks
and on the scribbles, and ``biomedseg.evaluate`` of both on the test split with the full masks.

Prints a markdown row and a ``RESULT`` line per dataset: test Dice of each, their ratio (target >= 0.9 on
four of the six datasets), the labelled fraction the scribbles kept and the steps each arm trained (a time
budget buys fewer on a loaded machine; ``--together`` trains both arms at once, so they share the load).
With ``--workdir`` finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
DATASETS = "isbi2012_em,drive_retina,dsb2018_nuclei,monuseg_histology,darkfield_bacteria,hc18_fetal_head"
IGNORE = 255
BLOCK = 16  # strokes are thinned by keeping random BLOCK x BLOCK cells of them


def scribble_mask(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``(H, W)`` class-index mask -> the same classes on about ``fraction`` of the pixels (strokes along
    each class region's skeleton, 3 px wide), 255 elsewhere. Every object keeps at least its own stroke
    where thinning would remove all of it."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    out = np.full(mask.shape, IGNORE, np.uint8)
    strokes = np.zeros(mask.shape, bool)
    for c in np.unique(mask):
        region = mask == c
        strokes |= ndimage.binary_dilation(skeletonize(region), np.ones((3, 3), bool)) & region
    keep = strokes.copy()
    if strokes.mean() > fraction:
        cells = rng.random(((mask.shape[0] + BLOCK - 1) // BLOCK, (mask.shape[1] + BLOCK - 1) // BLOCK))
        cell_keep = np.kron(cells < fraction / strokes.mean(), np.ones((BLOCK, BLOCK), bool))
        keep = strokes & cell_keep[: mask.shape[0], : mask.shape[1]]
        lab, n = ndimage.label(mask > 0)
        if n:  # objects the thinning emptied keep their whole stroke
            kept = np.bincount(lab[keep], minlength=n + 1) > 0
            lost = ~kept
            lost[0] = False
            keep |= strokes & lost[lab]
    out[keep] = mask[keep]
    return out


def make_scribbles(data: Path, out: Path, fraction: float, seed: int = 0) -> float:
    """The scribble copy of ``data`` in ``out`` (images symlinked); returns the labelled fraction."""
    from PIL import Image

    meta = json.loads((data / "dataset.json").read_text())
    test = set((meta.get("split") or {}).get("test", []))
    if (out / "dataset.json").is_file():
        return json.loads((out / "dataset.json").read_text())["scribble_fraction"]
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to((data / "images").resolve())
    rng = np.random.default_rng(seed)
    labelled = total = 0
    for p in sorted((data / "masks").iterdir()):
        mask = np.array(Image.open(p))
        if p.stem not in test:
            mask = scribble_mask(mask, fraction, rng)
            labelled += int((mask != IGNORE).sum())
            total += mask.size
        Image.fromarray(mask).save(out / "masks" / (p.stem + ".png"))
    meta.update(ignore_value=IGNORE, scribble_fraction=round(labelled / max(total, 1), 4))
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return meta["scribble_fraction"]


def trained(data: Path, run: Path, budget: str, extra: dict) -> Path:
    from biomedseg.runs import RunFolder
    from biomedseg.training.api import train

    if RunFolder(run).paths.curves.is_file():
        return run
    return train(data, run, time_budget=budget, quiet=True, **extra)


def steps_trained(run: Path) -> int:
    """Optimisation steps the run took (its last ``metrics.csv`` row): on a shared machine a time budget buys
    different numbers of steps, so the table shows them next to the Dice."""
    import csv

    from biomedseg.runs import RunFolder

    with open(RunFolder(run).paths.metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    return int(float(rows[-1]["iteration"])) if rows else 0


def test_dice(run: Path, data: Path, out: Path) -> float:
    from biomedseg.workflows.evaluation import evaluate

    return float(evaluate(run, data, out, split="test", quiet=True)["dice"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--set", action="append", default=[], help="extra training option key=value (both sides)")
    ap.add_argument("--together", action="store_true", help="train (and evaluate) the two arms at the same time")
    args = ap.parse_args(argv)
    from cpu_class import cpu_fields  # the CPU model and bf16/AMX/VNNI flags of the RESULT lines

    cpu = cpu_fields()
    from biomedseg.runs.config import parse_overrides

    extra = parse_overrides(args.set)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="biomedseg_scribbles_"))
    print(
        "| dataset | budget | labelled fraction | full-label Dice | scribble Dice | ratio | steps (full / scribble) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        data = SHARED / name
        if not (data / "images").is_dir():
            print(f"skip {name}: not found under {SHARED}", file=sys.stderr)
            continue
        frac = make_scribbles(data, work / name / "scribbles", args.fraction)
        arms = [(data, work / name / "full", work / name / "eval_full")]
        arms.append((work / name / "scribbles", work / name / "scribble_run", work / name / "eval_scribbles"))
        if args.together:  # both arms at once: on a shared machine they then meet the same load
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
                runs = list(pool.map(trained, *zip(*[(d, r, args.budget, extra) for d, r, _ in arms])))
                full, scr = pool.map(test_dice, runs, [data, data], [e for _, _, e in arms])
        else:
            runs = [trained(d, r, args.budget, extra) for d, r, _ in arms]
            full, scr = (test_dice(r, data, e) for r, (_, _, e) in zip(runs, arms))
        full_run, scr_run = runs
        steps = f"{steps_trained(full_run)} / {steps_trained(scr_run)}"
        print(
            f"| {name} | {args.budget} | {frac:.3f} | {full:.4f} | {scr:.4f} | {scr / full:.3f} | {steps} |", flush=True
        )
        print(
            f"RESULT scribbles dataset={name} budget={args.budget} labelled_fraction={frac:.4f} "
            f"full_dice={full:.4f} scribble_dice={scr:.4f} ratio={scr / full:.3f} "
            f"steps={steps.replace(' ', '')}{cpu}",
            flush=True,
        )
    print(f"workdir: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
