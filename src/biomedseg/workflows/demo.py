"""``biomedseg demo``: the whole pipeline on synthetic data the project generates itself.

Generates a microscopy-like dataset (touching round cells and thin filaments, two foreground
classes), trains for a short time budget on CPU, evaluates on the test split, predicts the test
images and prints the metrics and the paths of everything written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("biomedseg")

#: the demo's training time
DEMO_TIME_BUDGET = "2m"

# A small, fast configuration: the synthetic images are 256x256 grey and the objects small.
DEMO_CONFIG = {
    "model": "unet",
    "model_kwargs": {"depth": 4, "base_channels": 16, "num_res_units": 1},
    "patch_size": 128,
    "batch_size": 8,
    "lr": 3e-3,
    "iterations_per_epoch": 40,
}


def run_demo(out="biomedseg_demo", time_budget: str = DEMO_TIME_BUDGET, seed: int = 0, quiet: bool = False) -> dict:
    """Run generate -> train -> evaluate -> predict in ``out``; returns the test metrics."""
    from biomedseg.data.discovery import DATA_META
    from biomedseg.data.synthetic import make_synthetic_dataset
    from biomedseg.runs import RunFolder, RunPaths
    from biomedseg.workflows.evaluation import evaluate, format_metrics
    from biomedseg.workflows.prediction import predict
    from biomedseg.workflows.training import train

    out = Path(out)
    t0 = time.perf_counter()
    data = out / "data"
    run = out / "run"
    if RunFolder(run).has_checkpoint("last"):  # idempotent: a second demo starts afresh
        import shutil

        shutil.rmtree(run)
    make_synthetic_dataset(data, n_train=24, n_test=8, size=(256, 256), seed=seed)
    log.info("1/4 generated synthetic data in %s", data)
    log.info("2/4 training for %s ...", time_budget)
    train(data, run, time_budget=time_budget, seed=seed, quiet=quiet, **DEMO_CONFIG)
    log.info("3/4 evaluating on the test split ...")
    metrics = evaluate(run, data, out / "evaluation", split="test", quiet=quiet)
    log.info("4/4 predicting the test images ...")
    import json

    test_ids = json.loads((data / DATA_META).read_text())["split"]["test"]
    test_files = [str(data / "images" / f"{i}.png") for i in test_ids]
    predict(run, test_files, out / "predictions", overwrite=True, quiet=quiet)
    print(format_metrics(metrics))
    print(
        f"test Dice (mean over cell and filament): {metrics['dice']:.4f}   total time {time.perf_counter() - t0:.0f}s"
    )
    print("wrote:")
    for label, path in [
        ("data", data),
        ("run folder", run),
        ("training curves", RunPaths(run).curves),
        ("metrics", out / "evaluation" / "metrics.json"),
        ("per-image metrics", out / "evaluation" / "per_image.csv"),
        ("overlays", out / "evaluation" / "overlays"),
        ("report", out / "evaluation" / "report.html"),
        ("predictions", out / "predictions"),
    ]:
        print(f"  {label:18s} {path}")
    return metrics
