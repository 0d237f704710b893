"""Field metrics of a default-plan run on each shared dataset, next to the published numbers.

    python benchmarks/field_metrics.py [--datasets a,b,...] [--budget 5m] [--threads 1]
                                       [--workdir DIR] [--phase train|evaluate|both] [--timing]

For each dataset under ``shared/datasets`` (issue 25): ``biomedseg.train(DATA, time_budget=B)``
(the default plan, ``dataset.json``'s split, ``num_threads`` as given), then
``biomedseg.evaluate(RUN, DATA, split="test", metrics=<the field's metrics>)``; prints one markdown
row and one ``RESULT`` line per dataset. With ``--workdir`` finished runs are reused, so
``--phase train`` can run early in the background and ``--phase evaluate`` later.

``--timing``: ``evaluate`` on the 30-image ISBI 2012 set (all its images as the split) once with
pixel metrics only and once with every metric, and prints the ratio (issue 25 asks for <= 3x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
DATASETS = "isbi2012_em,dsb2018_nuclei,monuseg_histology,hc18_fetal_head,drive_retina,darkfield_bacteria"


def train_run(data: Path, run: Path, budget: str, threads: int) -> float:
    """Train ``run`` (skipped when it already holds a finished run); wall seconds (NaN when reused)."""
    from biomedseg.runs import RunFolder
    from biomedseg.training.api import train

    if RunFolder(run).has_checkpoint("last") and RunFolder(run).paths.curves.is_file():
        return float("nan")
    t0 = time.perf_counter()
    train(data, run, time_budget=budget, quiet=True, num_threads=threads)
    return time.perf_counter() - t0


#: the metric groups each field publishes (added to what the fingerprint chooses) and the column reported
FIELD = {
    "isbi2012_em": ("thin", ["rand_cell_interior", "vi_score_cell_interior", "hd95"]),
    "dsb2018_nuclei": ("instance,object", ["ap", "pq", "aji", "object_f1"]),
    "monuseg_histology": ("instance,object", ["aji", "aji_plus", "pq", "object_dice"]),
    "hc18_fetal_head": ("shape", ["hc_error_px", "hc_error_rel", "hd95", "assd"]),
    "drive_retina": ("thin", ["cldice", "hd95", "nsd"]),
    "darkfield_bacteria": ("", ["hd95", "nsd", "pq_spirochaete", "aji_erythrocyte"]),
}


def auto_choice(run: Path, data: Path, split: str = "test"):
    """What the fingerprint chooses for ``data`` (no --metrics, dataset.json without "metrics")."""
    from biomedseg.data.splits import select_split
    from biomedseg.inference.run import load_run
    from biomedseg.io import Palette
    from biomedseg.workflows.field_metrics import choose_for_split

    loaded = load_run(run, device="cpu")
    source, ids, by_id = select_split(loaded, data, None, None, split)
    return choose_for_split(
        None,
        source,
        [by_id[i] for i in ids],
        Palette.from_json(loaded.info.palette),
        loaded.info.strict_index,
        loaded.background,
    )


def evaluate_dataset(name: str, workdir: Path) -> dict:
    """Evaluate the trained run of ``name`` on its test split with the fingerprint's groups plus its field's."""
    from biomedseg.workflows.evaluation import evaluate

    data, run = SHARED / name, workdir / name / "run"
    choice = auto_choice(run, data)
    extra, keys = FIELD.get(name, ("", ["hd95"]))
    groups = ",".join(g for g in (*choice.groups, *extra.split(",")) if g)
    fov = data / "fov" if (data / "fov").is_dir() else None
    t0 = time.perf_counter()
    m = evaluate(
        run,
        data,
        workdir / name / "eval",
        split="test",
        metrics=groups,
        overlays=False,
        quiet=True,
        valid_dir=fov,
        device="cpu",
    )
    return {
        "name": name,
        "n": m["n_images"],
        "choice": choice,
        "groups": m["field"]["groups"],
        "keys": keys,
        "m": m,
        "seconds": time.perf_counter() - t0,
        "median": _medians(workdir / name / "eval", keys),
    }


def _medians(eval_dir: Path, keys) -> dict:
    """Median over the images of each of ``keys`` (``per_image.csv``)."""
    import csv

    import numpy as np

    with open(eval_dir / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in rows if r.get(k) not in (None, "", "nan")]
        if vals:
            out[k] = float(np.median(vals))
    return out


def timing(workdir: Path, name: str = "isbi2012_em") -> dict:
    """``evaluate`` of every image of ``name`` (30 for ISBI 2012): pixel metrics only, then all metrics."""
    from biomedseg.workflows.evaluation import evaluate

    data, run = SHARED / name, workdir / name / "run"
    out = {}
    for label, metrics in (("pixel", "pixel"), ("all", "all")):
        t0 = time.perf_counter()
        m = evaluate(
            run,
            data,
            workdir / name / f"timing_{label}",
            split="all",
            metrics=metrics,
            overlays=False,
            quiet=True,
            device="cpu",
        )
        out[label] = time.perf_counter() - t0
        out["n"] = m["n_images"]
    return out


def _row(r: dict) -> str:
    m = r["m"]
    scores = ", ".join(
        f"{k} {m[k]:.3f} (median {r['median'][k]:.3f})"
        for k in r["keys"]
        if isinstance(m.get(k), float) and k in r["median"]
    )
    return (
        f"| {r['name']} | {r['n']} | {m['dice']:.3f} | {scores} | {', '.join(r['choice'].groups[1:])}: "
        f"{r['choice'].reason} |"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--phase", choices=["train", "evaluate", "both"], default="both")
    ap.add_argument("--timing", action="store_true", help="also time evaluate: pixel metrics vs all (ISBI 2012)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="biomedseg_field_metrics_"))
    names = [n for n in args.datasets.split(",") if (SHARED / n / "images").is_dir()]
    for name in sorted(set(args.datasets.split(",")) - set(names)):
        print(f"skip {name}: not found under {SHARED}", file=sys.stderr)
    if args.phase in ("train", "both"):
        for name in names:
            s = train_run(SHARED / name, workdir / name / "run", args.budget, args.threads)
            print(f"{name}: trained ({s:.0f} s)", flush=True)
    if args.phase in ("evaluate", "both"):
        print("| dataset | test images | pixel Dice | field metrics (mean over images) | fingerprint's choice |")
        print("|---|---|---|---|---|")
        for name in names:
            r = evaluate_dataset(name, workdir)
            print(_row(r), flush=True)
            scores = " ".join(
                f"{k}={r['m'][k]:.4f} {k}_median={r['median'][k]:.4f}"
                for k in r["keys"]
                if isinstance(r["m"].get(k), float) and k in r["median"]
            )
            print(
                f"RESULT field_metrics dataset={name} budget={args.budget} test_images={r['n']} "
                f"dice={r['m']['dice']:.4f} {scores} groups={'+'.join(r['groups'])} "
                f"eval_s={r['seconds']:.0f}",
                flush=True,
            )
    if args.timing:
        t = timing(workdir)
        print(
            f"RESULT field_metrics_timing images={t['n']} evaluate_pixel_s={t['pixel']:.1f} "
            f"evaluate_all_s={t['all']:.1f} ratio={t['all'] / t['pixel']:.2f} (issue 25: <= 3)",
            flush=True,
        )
    print(f"workdir: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
