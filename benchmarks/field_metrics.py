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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--phase", choices=["train", "evaluate", "both"], default="both")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="biomedseg_field_metrics_"))
    for name in args.datasets.split(","):
        if not (SHARED / name / "images").is_dir():
            print(f"skip {name}: not found under {SHARED}", file=sys.stderr)
            continue
        s = train_run(SHARED / name, workdir / name / "run", args.budget, args.threads)
        print(f"{name}: trained ({s:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
