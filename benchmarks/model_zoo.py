"""Every architecture, same training budget, same data: size, cost, speed and test Dice.

    python benchmarks/model_zoo.py --budget 5m                       # all models, both datasets
    python benchmarks/model_zoo.py --budget 5m --models segnet       # one model per invocation
    python benchmarks/model_zoo.py --table-only                      # print what is collected

For each dataset and model: ``train(DATA, RUN, time_budget=B, model=NAME)`` with the default
(self-configured) plan, then ``evaluate(RUN, DATA, split="test")``. Each result is stored as
``WORKDIR/<dataset>/<model>/result.json`` and reused by later invocations (``--force`` redoes
it), so models can be run one at a time and the table printed at the end. Columns: parameters
and GFLOPs per 256x256 image of the configuration actually trained (the planner narrows an
architecture's width option, ``base_channels`` or ``width``, when its published width gets too few
steps in the budget, `planning/width_curves.py`; the "width" column shows the trained value and
the published one), training images/s (median over epochs of
``RUN/metrics.csv``), epochs, and test Dice per class. ISBI also gets an Otsu baseline row
(dark = membrane).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
DATASETS = "isbi2012_em,darkfield_bacteria"


def all_models() -> list[str]:
    from biomedseg.models import list_models

    return list_models()


def read_metrics_csv(run: Path) -> dict:
    """``images_per_s`` (median over epochs) and number of epochs from ``RUN/metrics.csv``."""
    path = run / "metrics.csv"
    if not path.is_file():
        return {"images_per_s": float("nan"), "epochs": 0}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    speeds = [float(r["images_per_s"]) for r in rows if r.get("images_per_s") not in (None, "")]
    return {"images_per_s": statistics.median(speeds) if speeds else float("nan"), "epochs": len(rows)}


def train_and_evaluate(dataset: str, label: str, workdir: Path, budget: str, force: bool = False, **overrides) -> dict:
    """Train + evaluate one configuration (cached in ``WORKDIR/dataset/label/result.json``)."""
    import yaml

    from biomedseg.models.summary import model_summary
    from biomedseg.training.api import train
    from biomedseg.workflows.evaluation import evaluate

    run = workdir / dataset / label
    result_file = run / "result.json"
    if result_file.is_file() and not force:
        return json.loads(result_file.read_text())
    if run.exists():  # an interrupted or forced run: start over
        shutil.rmtree(run)
    data = SHARED / dataset
    t0 = time.perf_counter()
    train(data, run / "run", time_budget=budget, quiet=True, **overrides)
    train_s = time.perf_counter() - t0
    m = evaluate(run / "run", data, run / "eval", split="test", overlays=False, quiet=True)
    cfg = yaml.safe_load((run / "run" / "config.yaml").read_text())
    info = json.loads((run / "run" / "dataset.json").read_text())
    summary = model_summary(
        cfg["model"],
        in_channels=info["channels"],
        n_classes=info["n_classes"],
        size=256,
        **(cfg.get("model_kwargs") or {}),
    )
    result = {
        "dataset": dataset,
        "label": label,
        "model": cfg["model"],
        "model_kwargs": cfg.get("model_kwargs") or {},
        "loss": cfg["loss"],
        "class_weights": cfg["class_weights"],
        "budget": budget,
        "train_s": round(train_s, 1),
        "params": summary["params"],
        "gflops": round(summary["gflops"], 2),
        **read_metrics_csv(run / "run"),
        "dice": round(m["dice"], 4),
        "per_class": {
            k: {"dice": round(v["dice"], 4), "precision": round(v["precision"], 4), "recall": round(v["recall"], 4)}
            for k, v in m["per_class"].items()
        },
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def otsu_baseline(dataset: str = "isbi2012_em") -> dict:
    """Global Otsu threshold per test image, dark pixels = membrane (class 0), pooled Dice."""
    from skimage.filters import threshold_otsu

    from biomedseg.data.discovery import find_pairs, resolve_data
    from biomedseg.io import Palette, read_image, read_mask
    from biomedseg.metrics.pixel import confusion_matrix, scores_from_confusion

    source = resolve_data(SHARED / dataset)
    classes = source.meta["classes"]
    test = set(source.meta["split"]["test"])
    cm = 0
    for s in find_pairs(source.images_dir, source.masks_dir):
        if s.id not in test:
            continue
        img = read_image(s.image)[:, :, 0].astype("float32")
        target, _ = read_mask(s.mask, Palette.identity(len(classes)), strict_index=True)
        pred = (img > threshold_otsu(img)).astype("uint8")  # 0 = membrane (dark), 1 = cell interior
        cm = cm + confusion_matrix(pred, target, len(classes))
    scores = scores_from_confusion(cm, classes, background=None)
    return {
        "label": "otsu (dark = membrane)",
        "dice": round(scores["dice"], 4),
        "per_class": {k: {"dice": round(v["dice"], 4)} for k, v in scores["per_class"].items()},
    }


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def _width(r: dict) -> str:
    """``"16 (64)"``: the width option the run trained with and the architecture's published one."""
    from biomedseg.models.registry import width_option

    option = width_option(r["model"])
    if option is None:
        return "-"
    key, full = option
    return f"{r.get('model_kwargs', {}).get(key, full)} ({full})"


def print_table(dataset: str, results: list[dict], baseline: dict | None = None, first_col: str = "model") -> None:
    classes = list((results[0] if results else baseline)["per_class"])
    print(f"\n### {dataset}\n")
    print(
        f"| {first_col} | width (published) | params (M) | GFLOPs / 256x256 | train img/s | epochs | "
        + " | ".join(f"Dice {c}" for c in classes)
        + " |"
    )
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(classes))
    for r in results:
        print(
            f"| {r['label']} | {_width(r)} | {r['params'] / 1e6:.2f} | {_fmt(r['gflops'], '.1f')} | "
            f"{_fmt(r['images_per_s'], '.1f')} | {r['epochs']} | "
            + " | ".join(_fmt(r["per_class"].get(c, {}).get("dice"), ".4f") for c in classes)
            + " |"
        )
    if baseline:
        print(
            f"| {baseline['label']} | - | - | - | - | - | "
            + " | ".join(_fmt(baseline["per_class"].get(c, {}).get("dice"), ".4f") for c in classes)
            + " |"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="5m", help="training time per model (default 5m)")
    ap.add_argument("--models", default=None, help="comma-separated architectures (default: all registered)")
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--workdir", default="runs/model_zoo", help="results are kept (and reused) here")
    ap.add_argument("--set", action="append", default=[], help="extra config key=value for every run")
    ap.add_argument("--force", action="store_true", help="redo runs that already have a result")
    ap.add_argument("--table-only", action="store_true", help="only print the collected results")
    args = ap.parse_args(argv)
    from biomedseg.runs.config import parse_overrides

    extra = parse_overrides(args.set)
    models = args.models.split(",") if args.models else all_models()
    unknown = sorted(set(models) - set(all_models()))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {', '.join(all_models())}")
    workdir = Path(args.workdir)
    for dataset in args.datasets.split(","):
        if not (SHARED / dataset / "images").is_dir():
            print(f"skip {dataset}: not found under {SHARED}", file=sys.stderr)
            continue
        results = []
        for name in models:
            result_file = workdir / dataset / name / "result.json"
            if args.table_only:
                if result_file.is_file():
                    results.append(json.loads(result_file.read_text()))
                continue
            print(f"{dataset}: training {name} for {args.budget} ...", file=sys.stderr, flush=True)
            results.append(train_and_evaluate(dataset, name, workdir, args.budget, args.force, model=name, **extra))
        baseline = otsu_baseline(dataset) if dataset == "isbi2012_em" else None
        if results or baseline:
            print_table(dataset, results, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
