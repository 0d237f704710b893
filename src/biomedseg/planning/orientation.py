"""Does the data have a preferred orientation? Flips and 90-degree rotations measured, not assumed.

:func:`orientation_evidence` takes the training images (a list of ``(H, W, C)`` arrays, any
dtype and size) and tests three transforms: ``lr_flip`` (left-right), ``ud_flip`` (up-down) and
``rot90`` (a quarter turn, tested as the transpose: with both flips it generates all eight).

Each image (at most :data:`MAX_IMAGES`, evenly spaced) becomes three :data:`GRID` x :data:`GRID`
maps by exact area averaging: its grey level (channel mean, in units of the image's own pixel
mean and std) and its absolute vertical and horizontal central differences at native resolution
(divided by the image's mean difference). Two statistics per transform ``F``:

- ``mean_image``: the grey maps' mean ``A``; ``score = rms(A - F(A))``;
- ``gradients``: the same for the two difference maps, which a transpose swaps (speckle or
  stripes elongated along one axis show up here even when the mean image is uniform).

The noise floor comes from the images themselves, as a sign-flip permutation test: with
``d_i = X_i - F(X_i)``, ``score = rms(mean_i d_i)``, and if each image were as likely to appear
transformed as not, ``d_i`` and ``-d_i`` would be equally likely, so ``floor = rms`` of
``mean_i s_i d_i`` over random signs ``s_i``, whose expectation is ``sqrt(sum_i |d_i|^2) / n``
(per pixel). A transform changes the data when, for one of the statistics, the score is at least
:data:`NOISE_FACTOR` x the floor (a consistent asymmetry, not chance) *and* at least
:data:`MIN_ASYMMETRY` (in units of the images' own standard deviation: a systematic but faint
illumination gradient does not forbid flips). The ratio score/floor can reach at most
``sqrt(n)``, so fewer than ``NOISE_FACTOR**2`` images never show a preferred axis.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import sparse

__all__ = ["GRID", "MAX_IMAGES", "MIN_ASYMMETRY", "NOISE_FACTOR", "TRANSFORMS", "orientation_evidence"]

#: side of the common grid every image is area-averaged to
GRID = 64
#: at most this many images (evenly spaced over the list) are measured
MAX_IMAGES = 64
#: larger images are reduced by an integer block mean to at most this side before their
#: differences are taken (huge slides would otherwise cost seconds each)
MAX_SIDE = 1024
#: a transform changes the data when a statistic is this many times its noise floor ...
NOISE_FACTOR = 3.0
#: ... and its asymmetry (rms per grid pixel) is at least this: in units of the images' pixel std
#: for the mean image, of their mean difference for the gradient maps
MIN_ASYMMETRY = 0.15
#: the tested transforms, with the words the reasons use
TRANSFORMS = {"lr_flip": "left-right flip", "ud_flip": "up-down flip", "rot90": "90-degree rotation"}


@lru_cache(maxsize=32)
def _area_matrix(n: int, m: int) -> sparse.csr_matrix:
    """Sparse ``(m, n)`` matrix averaging ``n`` samples into ``m`` equal bins (fractional overlaps):
    exact area averaging, symmetric under reversal, and single-threaded (BLAS threads crawl on a
    busy CPU)."""
    edges = np.arange(m + 1) * (n / m)
    overlap = np.clip(
        np.minimum(edges[1:, None], np.arange(1, n + 1)) - np.maximum(edges[:-1, None], np.arange(n)), 0.0, None
    )
    return sparse.csr_matrix((overlap / (n / m)).astype(np.float32))


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f`` x ``f`` blocks of the first two axes; a remainder of < ``f`` rows/columns is
    cropped, half on each side."""
    if f <= 1:
        return a
    (h, rh), (w, rw) = divmod(a.shape[0], f), divmod(a.shape[1], f)
    a = a[rh // 2 : rh // 2 + h * f, rw // 2 : rw // 2 + w * f]
    rest = a.shape[2:]
    cols = a.reshape(h * f, w, f, *rest).sum(axis=2, dtype=np.float32)
    return cols.reshape(h, f, w, *rest).sum(axis=1) / np.float32(f * f)


def _to_grid(a: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(GRID, GRID)`` by area averaging."""
    return np.asarray(_area_matrix(a.shape[1], GRID) @ (_area_matrix(a.shape[0], GRID) @ a).T).T


def _grey(image: np.ndarray) -> np.ndarray:
    """Channel mean as ``float32``, block-averaged by an integer factor to at most :data:`MAX_SIDE`."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    img = _block_mean(img, -(-max(img.shape[:2]) // MAX_SIDE))
    return img[:, :, 0].astype(np.float32) if img.shape[2] == 1 else img.mean(axis=2, dtype=np.float32)


def _maps(image: np.ndarray) -> np.ndarray:
    """``(3, GRID, GRID)``: grey level (z-scored with the image's pixel mean and std), |d/dy| and
    |d/dx| (over the image's mean difference)."""
    g = _grey(image)
    if min(g.shape) < 3:
        return np.zeros((3, GRID, GRID), np.float32)
    # central differences: centred on the pixels, so a flip or transpose maps them onto each other
    dy, dx = np.abs(g[2:, 1:-1] - g[:-2, 1:-1]), np.abs(g[1:-1, 2:] - g[1:-1, :-2])
    grey = (_to_grid(g) - g.mean()) / (g.std() or 1.0)  # in units of the image's own pixel std
    diffs = np.stack([_to_grid(dy), _to_grid(dx)])
    return np.concatenate([grey[None], diffs / (diffs.mean() or 1.0)]).astype(np.float32)


def _apply(name: str, maps: np.ndarray) -> np.ndarray:
    """Transform ``(n, 3, G, G)`` maps (grey, |d/dy|, |d/dx|); a transpose swaps the difference maps."""
    if name == "lr_flip":
        return maps[..., ::-1]
    if name == "ud_flip":
        return maps[..., ::-1, :]
    return maps[:, [0, 2, 1]].swapaxes(-1, -2)


def _statistic(d: np.ndarray) -> dict:
    """Score and sign-flip noise floor of the differences ``d`` ``(n, D)`` (rms per pixel)."""
    n, dim = d.shape
    score = float(np.linalg.norm(d.mean(axis=0)) / np.sqrt(dim))
    floor = float(np.sqrt(np.sum(d.astype(np.float64) ** 2)) / n / np.sqrt(dim))
    ratio = score / floor if floor > 0 else 0.0
    changed = ratio >= NOISE_FACTOR and score >= MIN_ASYMMETRY
    return {"score": round(score, 4), "floor": round(floor, 4), "ratio": round(ratio, 2), "changed": changed}


def _reason(name: str, stats: dict, worst: str, n: int) -> str:
    s = stats[worst]
    what = "mean image" if worst == "mean_image" else "gradient maps"
    numbers = f"{what} asymmetry {s['score']:.3f} = {s['ratio']:.1f}x the noise floor {s['floor']:.3f} ({n} images)"
    if s["changed"]:
        return f"{TRANSFORMS[name]} changes the data: {numbers}"
    if s["ratio"] >= NOISE_FACTOR:
        return f"{TRANSFORMS[name]} keeps the data: {numbers}, below the {MIN_ASYMMETRY} std that would matter"
    return f"{TRANSFORMS[name]} keeps the data: {numbers}, within {NOISE_FACTOR:g}x of noise"


def orientation_evidence(images) -> dict:
    """Per transform (``lr_flip``, ``ud_flip``, ``rot90``), whether it leaves the data's statistics alone.

    ``images``: a list of ``(H, W, C)`` (or ``(H, W)``) arrays, any dtype and size. Returns
    ``{"n_images": n, "anisotropy": mean |d/dy| / mean |d/dx|, name: {"score", "floor", "ratio",
    "statistic", "invariant", "reason", "statistics": {"mean_image": {...}, "gradients": {...}}}}``;
    ``score``, ``floor`` and ``ratio`` are those of ``statistic``, the one that changed the most
    (``mean_image`` or ``gradients``). Plain JSON-able data.
    """
    images = list(images)
    if len(images) > MAX_IMAGES:
        images = [images[i] for i in np.unique(np.linspace(0, len(images) - 1, MAX_IMAGES).round().astype(int))]
    maps = np.stack([_maps(img) for img in images]) if images else np.zeros((0, 3, GRID, GRID), np.float32)
    n = len(maps)
    grad = maps[:, 1:].mean(axis=(2, 3)).sum(axis=0) if n else np.ones(2)
    out: dict = {"n_images": n, "anisotropy": round(float(grad[0] / grad[1]) if grad[1] > 0 else 1.0, 3)}
    for name in TRANSFORMS:
        d = maps - _apply(name, maps) if n else np.zeros((1, 3, GRID, GRID), np.float32)
        stats = {
            "mean_image": _statistic(d[:, 0].reshape(len(d), -1)),
            "gradients": _statistic(d[:, 1:].reshape(len(d), -1)),
        }
        worst = max(stats, key=lambda k: (stats[k]["changed"], stats[k]["ratio"]))
        out[name] = {
            "score": stats[worst]["score"],
            "floor": stats[worst]["floor"],
            "ratio": stats[worst]["ratio"],
            "statistic": worst,
            "invariant": not any(s["changed"] for s in stats.values()),
            "reason": _reason(name, stats, worst, n),
            "statistics": stats,
        }
    return out
