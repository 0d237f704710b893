"""Speed of biomedseg's hand-written augmentations against MONAI's dictionary transforms.

    python benchmarks/augment_speed.py               # ~1 minute on a 2-core CPU
    python benchmarks/augment_speed.py --reps 3      # smoke run

Per 256x256 training patch, with 1 and 3 channels, as the training pipeline needs them: numpy
image ``(C, H, W) float32`` and mask ``(H, W) int64`` in, numpy out (MONAI's outputs converted
back, the label as ``int64``). Each transform is applied with probability 1 (the cost when it
fires). Pairs:

- ``flips``: ``FlipRot90`` vs ``RandRotate90d(max_k=3)`` + ``RandFlipd(prob=0.5)``;
- ``affine``: ``Spatial`` rotation +-15 degrees and scale 0.85-1.15 (one ``map_coordinates``
  per channel and for the mask) vs ``RandAffined`` with the same ranges (bilinear image,
  nearest label, reflection padding);
- ``elastic``: ``Spatial`` elastic (sigma 20, rms 4 px) vs ``Rand2DElasticd`` (control points
  every 20 px, offsets 1-2: a comparable, not identical, deformation);
- ``intensity``: ``Gamma`` + ``Contrast`` + ``GaussianNoise`` vs ``RandAdjustContrastd`` (gamma)
  + ``RandScaleIntensityFixedMeand`` + ``RandGaussianNoised`` (image key only).

Torch and numpy run single-threaded (as in the data-loading workers). The two sides are timed
interleaved (ours, MONAI, ours, MONAI, ...; ``--calls`` patches per turn) and the median
per-patch time is reported. One ``RESULT`` line gives MONAI's time over ours per pair (> 1: ours
is faster).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import torch

PATCH = 256


def ours() -> dict:
    from biomedseg.transforms import augment as A
    from biomedseg.transforms.augment_base import Compose

    return {
        "flips": Compose([A.FlipRot90()]),
        "affine": Compose([A.Spatial(rotate_p=1.0, degrees=15, scale_p=1.0, scale=(0.85, 1.15))]),
        "elastic": Compose([A.Spatial(elastic_p=1.0, sigma=20, magnitude=4)]),
        "intensity": Compose([A.Gamma(p=1.0), A.Contrast(p=1.0), A.GaussianNoise(p=1.0, std=(0.0, 0.1))]),
    }


def monai_side() -> dict:
    from monai import transforms as M

    keys = ("image", "label")
    modes = ("bilinear", "nearest")
    pipelines = {
        "flips": M.Compose([M.RandRotate90d(keys, prob=1.0, max_k=3), M.RandFlipd(keys, prob=0.5, spatial_axis=1)]),
        "affine": M.Compose(
            [
                M.RandAffined(
                    keys,
                    prob=1.0,
                    rotate_range=math.radians(15),
                    scale_range=(0.15, 0.15),
                    mode=modes,
                    padding_mode="reflection",
                )
            ]
        ),
        "elastic": M.Compose(
            [
                M.Rand2DElasticd(
                    keys, spacing=(20, 20), magnitude_range=(1, 2), prob=1.0, mode=modes, padding_mode="reflection"
                )
            ]
        ),
        "intensity": M.Compose(
            [
                M.RandAdjustContrastd("image", prob=1.0, gamma=(0.75, 1.35)),
                M.RandScaleIntensityFixedMeand("image", prob=1.0, factors=0.2),
                M.RandGaussianNoised("image", prob=1.0, std=0.1),
            ]
        ),
    }
    for p in pipelines.values():
        p.set_random_state(0)
    return pipelines


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def run_ours(t, image, mask, rng):
    return t(image, mask, rng)


def run_monai(t, image, mask, rng):
    out = t({"image": image, "label": mask[None]})
    return (
        np.ascontiguousarray(_to_numpy(out["image"]), dtype=np.float32),
        np.ascontiguousarray(_to_numpy(out["label"])[0]).astype(np.int64),
    )


def time_pair(a, b, image, mask, reps: int, calls: int) -> tuple[float, float]:
    """Median seconds per patch of ``a`` (ours) and ``b`` (MONAI), timed interleaved."""
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for fn, t in (("a", a), ("b", b)):  # warm-up (imports, caches)
        (run_ours if fn == "a" else run_monai)(t, image, mask, rng)
    for _ in range(reps):
        for key, t, runner in (("a", a, run_ours), ("b", b, run_monai)):
            start = time.perf_counter()
            for _ in range(calls):
                out, m = runner(t, image, mask, rng)
            times[key].append((time.perf_counter() - start) / calls)
            assert out.dtype == np.float32 and m.dtype == np.int64 and m.shape == mask.shape
    return statistics.median(times["a"]), statistics.median(times["b"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=21, help="turns per side (median over them)")
    ap.add_argument("--calls", type=int, default=10, help="patches per turn")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mine, theirs = ours(), monai_side()
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (PATCH, PATCH)).astype(np.int64)
    ratios = []
    print(f"{'pair':<10} {'C':>2} {'ours ms':>9} {'MONAI ms':>9} {'MONAI/ours':>10}")
    for channels in (1, 3):
        image = rng.standard_normal((channels, PATCH, PATCH)).astype(np.float32)
        for name in mine:
            a, b = time_pair(mine[name], theirs[name], image, mask, args.reps, args.calls)
            ratios.append(f"{name}_{channels}ch={b / a:.2f}")
            print(f"{name:<10} {channels:>2} {a * 1e3:9.3f} {b * 1e3:9.3f} {b / a:10.2f}")
    print("RESULT augment_speed patch=256 " + " ".join(ratios))


if __name__ == "__main__":
    main()
