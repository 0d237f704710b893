"""What the data-driven augmentation plan measures on each shared dataset (training split).

    python benchmarks/augment_evidence.py                       # ../shared/datasets, all six
    python benchmarks/augment_evidence.py --root DIR --datasets hc18_fetal_head

Per dataset: the orientation evidence (score / noise floor = ratio for the mean image and the
gradient maps, per transform, and whether it keeps the data), the gradient anisotropy, the
intensity spreads between images and the ranges planned from them, the seconds each measurement
took, and the planned flips. One ``RESULT`` line per dataset.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATASETS = (
    "hc18_fetal_head",
    "isbi2012_em",
    "drive_retina",
    "dsb2018_nuclei",
    "monuseg_histology",
    "darkfield_bacteria",
)


def training_images(folder: Path) -> list[np.ndarray]:
    from biomedseg.io import read_image

    meta = json.loads((folder / "dataset.json").read_text())
    files = {p.stem: p for p in (folder / "images").iterdir()}
    return [read_image(files[i]) for i in meta["split"]["train"]]


def channels_of(images) -> int:
    """3 when any image holds real colour (as training decides), else 1."""
    from biomedseg.io.images import is_grey_rgb

    return 3 if any(i.shape[2] == 3 and not is_grey_rgb(i) for i in images) else 1


def report(name: str, images) -> None:
    from biomedseg.planning.augment import plan_augment
    from biomedseg.planning.intensity_variation import intensity_variation
    from biomedseg.planning.orientation import TRANSFORMS, orientation_evidence

    channels = channels_of(images)
    t0 = time.perf_counter()
    ev = orientation_evidence(images)
    t1 = time.perf_counter()
    iv = intensity_variation(images, channels)
    t2 = time.perf_counter()
    flips = [e for e in plan_augment({"orientation": ev})["value"] if e["name"] in ("flip", "flip_rot90")] or "none"
    print(
        f"{name}: {len(images)} images ({ev['n_images']} measured), {channels} channel(s), "
        f"anisotropy {ev['anisotropy']:.2f}, {t1 - t0:.2f} s + {t2 - t1:.2f} s"
    )
    for t in TRANSFORMS:
        s = ev[t]["statistics"]
        cols = "  ".join(f"{k} {v['score']:.3f}/{v['floor']:.3f}={v['ratio']:.1f}x" for k, v in s.items())
        print(f"  {t:8s} {'keeps' if ev[t]['invariant'] else 'CHANGES':7s} {cols}")
    spreads = {k: v for k, v in iv.items() if k.endswith("_spread")}
    print(f"  spreads {spreads}\n  ranges {iv['ranges']}\n  flips {flips}")
    kept = ",".join(t for t in TRANSFORMS if ev[t]["invariant"]) or "none"
    ratios = " ".join(f"{t}={ev[t]['ratio']:.1f}" for t in TRANSFORMS)
    print(
        f"RESULT augment_evidence dataset={name} {ratios} invariant={kept} brightness={iv['ranges']['brightness']} "
        f"contrast={iv['ranges']['contrast'][0]}-{iv['ranges']['contrast'][1]}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    args = ap.parse_args()
    for name in args.datasets:
        report(name, training_images(args.root / name))


if __name__ == "__main__":
    main()
