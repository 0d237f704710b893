"""A quick check of ``predict``'s out-of-distribution flags through the ordinary commands (not the
full ``ood_detection`` benchmark of issue 22): one short run trained with ``biomedseg.train`` (which
writes ``RUN/trust.json``) on one shared dataset predicts its own test images and the first
``--others`` test images of every other shared dataset in one ``biomedseg.predict`` call; reported
per dataset: images flagged, the range of ``ood_score``, the reasons; overall: the AUROC of
``ood_score`` for "other dataset" against "own test images" and the share of own images flagged.

    python benchmarks/ood_smoke.py --train dsb2018_nuclei --budget 90s

The last line is the single result line. Needs the shared datasets (``/work/shared/datasets``).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

SHARED = Path("/work/shared/datasets")


def auroc(negatives: list[float], positives: list[float]) -> float:
    """P(a positive scores above a negative), ties counted half."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    return sum(pairs) / len(pairs) if pairs else float("nan")


def test_files(own: str, others: int) -> dict[str, list[str]]:
    files = {}
    for name in sorted(p.name for p in SHARED.iterdir() if (p / "dataset.json").is_file()):
        ids = json.loads((SHARED / name / "dataset.json").read_text())["split"]["test"]
        ids = ids if name == own else ids[:others]
        images = {p.stem: p for p in (SHARED / name / "images").iterdir()}
        files[name] = [str(images[i]) for i in ids if i in images]
    return files


def main() -> None:
    import torch

    import biomedseg

    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="dsb2018_nuclei")
    ap.add_argument("--budget", default="90s")
    ap.add_argument("--others", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run = biomedseg.train(
            SHARED / a.train, Path(tmp) / "run", time_budget=a.budget, seed=0, quiet=True, num_threads=1
        )
        train_s = time.perf_counter() - t
        files = test_files(a.train, a.others)
        kw = dict(quiet=True, overlays=False, compile="off", threads=1)
        rows = {}
        for name, fs in files.items():  # one output folder per dataset: file names repeat across datasets
            s = biomedseg.predict(run, fs, Path(tmp) / "pred" / name, **kw)
            rows.update({r["file"]: r for r in csv.DictReader(open(s.predictions))})
    own, other, flagged = [], [], {}
    for name, fs in files.items():
        scores = [float(rows[f]["ood_score"]) for f in fs if rows[f]["ood_score"]]
        flagged[name] = sum(rows[f]["ood_flag"] == "True" for f in fs)
        reasons = sorted({rows[f]["ood_reasons"] for f in fs if rows[f]["ood_reasons"]})
        (own if name == a.train else other).extend(scores)
        print(f"{name:20s} {'own' if name == a.train else '   '} flagged {flagged[name]}/{len(fs)}", end=" ")
        print(f"ood_score {min(scores):.2f}..{max(scores):.2f} {reasons}")
    n_other = sum(len(fs) for name, fs in files.items() if name != a.train)
    print(
        f"RESULT ood_smoke train={a.train} budget={a.budget} train_s={train_s:.0f} own={len(own)} "
        f"other={len(other)} auroc={auroc(own, other):.3f} own_flagged={flagged[a.train]}/{len(files[a.train])} "
        f"other_flagged={sum(v for k, v in flagged.items() if k != a.train)}/{n_other}"
    )


if __name__ == "__main__":
    main()
