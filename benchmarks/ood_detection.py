"""Issue 22: are images of another dataset flagged as unlike the training data, and own images not?

    python benchmarks/ood_detection.py [--runs DIR] [--sources a,b,...] [--threads 1] [--workdir DIR]

For each source dataset: its run (``--runs DIR`` reuses ``DIR/<source>/run``, copied into the work
folder first because ``trust.json`` is written into it; otherwise one trained at ``--budget``) gets
its ``RUN/trust.json`` written by the function ``train`` calls
(:func:`biomedseg.workflows.training.describe_run`: up to 64 training and 32 validation images,
evenly spaced; the features as one Gaussian or, for training data of several modes, a mixture).
Then every test image of the six shared datasets is scored against it with
:func:`biomedseg.trust.ood.ood_scores` (what ``predict`` calls; grey and colour images conformed to
the run's channels as ``predict`` does).

Per source: AUROC of the OOD score for "test image of another dataset" against "test image of the
source dataset" (all five others pooled, and each alone), the same for the ``intensity`` and
``features`` parts alone and for ``predict``'s decision (``auroc_flag``: flagged images first, then by
score; a flag also comes from a colour image on a grey-trained run or the reverse, which the score
does not count), and the share of images flagged (own: false alarms; others: detections). Every
image's result is kept in ``WORKDIR/<source>/ood_scores.json``; a ``RUN/trust.json`` already in the
work folder's copy is reused.
Targets (the issue): AUROC >= 0.95 with <= 5% of the own test images flagged.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
DATASETS = "isbi2012_em,dsb2018_nuclei,monuseg_histology,hc18_fetal_head,drive_retina,darkfield_bacteria"
AUROC_TARGET, OWN_FLAGGED_TARGET = 0.95, 0.05


def auroc(negatives, positives) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney statistic)."""
    neg = np.asarray([v for v in negatives if v is not None and math.isfinite(v)], float)
    pos = np.asarray([v for v in positives if v is not None and math.isfinite(v)], float)
    if not neg.size or not pos.size:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def copy_run(name: str, runs: Path, workdir: Path) -> Path:
    run = workdir / name / "run"
    if not (run / "checkpoints" / "best.pt").is_file():
        src = runs / name / "run"
        if not (src / "checkpoints" / "best.pt").is_file():
            raise SystemExit(f"{src}: no run there (checkpoints/best.pt)")
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("last.pt", "tensorboard", "trust.json"))
    return run


def _every(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def describe(run: Path) -> tuple[dict, str]:
    """Write ``RUN/trust.json`` with the function ``train`` calls
    (:func:`biomedseg.workflows.training.describe_run`); ``(description, how it was made)``."""
    from biomedseg.trust.descriptor import read_description
    from biomedseg.workflows.training import describe_run

    if read_description(run) is not None:
        return read_description(run), "reused"
    describe_run(run, device="cpu")
    return read_description(run), "workflows.training.describe_run"


def modes_of(description: dict) -> int:
    """How many modes the description's features have (1: one Gaussian; 0: no features)."""
    features = description.get("features")
    return 0 if features is None else len(features.get("modes", [None]))


def test_images(name: str) -> list[Path]:
    """The test split's image files of a shared dataset (``dataset.json``)."""
    meta = json.loads((SHARED / name / "dataset.json").read_text())
    ids = set(meta["split"]["test"])
    return sorted(p for p in (SHARED / name / "images").iterdir() if p.stem in ids)


def score_all(run: Path, description: dict, targets: list[str]) -> dict[str, list[dict]]:
    """``{dataset: [ood_scores(...) of each test image]}`` against the run's description."""
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image
    from biomedseg.io.pixel_size import pixel_size
    from biomedseg.trust.ood import ood_scores

    loaded = load_run(run, device="cpu")
    predictor = loaded.predictor()
    return {
        t: [
            {"file": p.name, **ood_scores(loaded, description, read_image(p), pixel_size(p), predictor=predictor)}
            for p in test_images(t)
        ]
        for t in targets
    }


def source_result(source: str, scored: dict[str, list[dict]]) -> dict:
    own = scored[source]
    others = {t: v for t, v in scored.items() if t != source}
    pooled = [r for v in others.values() for r in v]
    out = {
        "own_n": len(own),
        "own_flagged": float(np.mean([r["flag"] for r in own])),
        "other_n": len(pooled),
        "other_flagged": float(np.mean([r["flag"] for r in pooled])),
        "auroc": auroc([r["score"] for r in own], [r["score"] for r in pooled]),
        "per_target": {
            t: {
                "auroc": auroc([r["score"] for r in own], [r["score"] for r in v]),
                "flagged": float(np.mean([r["flag"] for r in v])),
            }
            for t, v in others.items()
        },
    }
    flag_first = (
        [(r["score"] or 0.0) + (1e6 if r["flag"] else 0.0) for r in own],
        [(r["score"] or 0.0) + (1e6 if r["flag"] else 0.0) for r in pooled],
    )
    out["auroc_flag"] = auroc(*flag_first)
    for part in ("intensity", "features"):
        out[f"auroc_{part}"] = auroc([r["parts"][part] for r in own], [r["parts"][part] for r in pooled])
    reasons = [x for r in own if r["flag"] for x in r["reasons"]]
    out["own_reasons"] = sorted(set(reasons))
    return out


def result_line(source: str, r: dict, seconds: dict, writer: str, cpu: str, description: dict) -> str:
    per = " ".join(f"auroc_vs_{t}={v['auroc']:.3f} flagged_{t}={v['flagged']:.2f}" for t, v in r["per_target"].items())
    return (
        f"RESULT ood_detection source={source} own_test={r['own_n']} own_flagged={r['own_flagged']:.3f} "
        f"other_test={r['other_n']} other_flagged={r['other_flagged']:.3f} auroc={r['auroc']:.4f} "
        f"auroc_flag={r['auroc_flag']:.4f} auroc_intensity={r['auroc_intensity']:.4f} "
        f"auroc_features={r['auroc_features']:.4f} {per} "
        f"own_flag_reasons={'|'.join(r['own_reasons']).replace(' ', '_') or 'none'} "
        f"modes={modes_of(description)} "
        f"threshold_intensity={description['thresholds'].get('intensity', float('nan')):.4g} "
        f"threshold_features={description['thresholds'].get('features', float('nan')):.4g} "
        f"describe_s={seconds['describe']:.0f} score_s={seconds['score']:.0f} trust_json_by={writer.split(' ')[0]}{cpu}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="DIR/<dataset>/run: runs to reuse (copied, never written)")
    ap.add_argument("--sources", default=DATASETS, help="datasets whose run is tested")
    ap.add_argument("--datasets", default=DATASETS, help="datasets whose test images are scored")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    import torch

    sys.path.insert(0, str(HERE))
    from cpu_class import cpu_fields  # the CPU model and bf16/AMX/VNNI flags of the RESULT lines

    torch.set_num_threads(args.threads)
    cpu = cpu_fields()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="biomedseg_ood_"))
    targets = [t for t in args.datasets.split(",") if (SHARED / t / "images").is_dir()]
    results = {}
    for source in args.sources.split(","):
        if source not in targets:
            print(f"skip {source}: not found under {SHARED}", file=sys.stderr)
            continue
        run = copy_run(source, Path(args.runs), workdir)
        t0 = time.perf_counter()
        description, writer = describe(run)
        t1 = time.perf_counter()
        scored = score_all(run, description, targets)
        (workdir / source / "ood_scores.json").write_text(json.dumps(scored, indent=1, default=float))
        seconds = {"describe": t1 - t0, "score": time.perf_counter() - t1}
        results[source] = source_result(source, scored)
        print(result_line(source, results[source], seconds, writer, cpu, description), flush=True)
    if results:
        n = len(results)
        ok_auc = sum(r["auroc"] >= AUROC_TARGET for r in results.values())
        ok_own = sum(r["own_flagged"] <= OWN_FLAGGED_TARGET for r in results.values())
        print(
            f"RESULT ood_detection_summary sources={n} auroc>={AUROC_TARGET}={ok_auc}/{n} "
            f"own_flagged<={OWN_FLAGGED_TARGET:.0%}={ok_own}/{n} "
            f"auroc_flag>={AUROC_TARGET}={sum(r['auroc_flag'] >= AUROC_TARGET for r in results.values())}/{n} "
            f"mean_auroc={np.mean([r['auroc'] for r in results.values()]):.4f} "
            f"mean_own_flagged={np.mean([r['own_flagged'] for r in results.values()]):.3f} "
            f"mean_other_flagged={np.mean([r['other_flagged'] for r in results.values()]):.3f}",
            flush=True,
        )
    print(f"workdir: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
