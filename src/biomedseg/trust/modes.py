"""Training data made of several modes (modalities, stains) described as a mixture, for :mod:`.descriptor`.

One Gaussian over pooled features of, e.g., fluorescence + brightfield + H&E images is wide: its
thresholds let grey ultrasound pass as familiar. :func:`choose_modes` splits the training images'
pooled bottleneck features into ``k`` groups (k-means in the first principal directions, ``k`` from
1 to ``MAX_MODES`` chosen by the Bayesian information criterion of a diagonal Gaussian mixture, every
group at least ``MIN_MODE_IMAGES`` images): single-modality data gives ``k = 1`` and is described
exactly as before. With ``k > 1`` each mode has its own shrunk Gaussian
(:func:`~.gaussian.fit_feature_gaussian`) and its ``typical`` distance (the median held-out
distance of its own images); an image's feature distance is the smallest over the modes of
``distance / typical`` (:func:`mixture_distance`): near one mode, relative to how spread that mode is.
"""

from __future__ import annotations

import numpy as np

#: Most modes considered.
MAX_MODES = 4
#: Fewest training images per mode (a smaller group is not a mode of its own).
MIN_MODE_IMAGES = 5
#: Principal directions the modes are found in.
MODE_DIMS = 8
#: k-means restarts per ``k`` (seeded).
KMEANS_RESTARTS = 8


def _kmeans(z: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    """Labels of one k-means run (k-means++ start) on ``z`` ``(n, q)``."""
    centres = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        d2 = np.min([((z - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(z[rng.choice(len(z), p=d2 / d2.sum())] if d2.sum() > 0 else z[rng.integers(len(z))])
    c = np.array(centres)
    labels = np.zeros(len(z), dtype=np.int64)
    for _ in range(iters):
        new = ((z[:, None, :] - c[None]) ** 2).sum(2).argmin(1)
        if _ and (new == labels).all():
            break
        labels = new
        c = np.array([z[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
    return labels


def _bic(z: np.ndarray, labels: np.ndarray) -> float:
    """BIC of a diagonal Gaussian per group (hard assignments), variances floored."""
    n, q = z.shape
    floor = 1e-3 * float(z.var(0).mean() + 1e-12)
    ll, k = 0.0, int(labels.max()) + 1
    for j in range(k):
        g = z[labels == j]
        var = np.maximum(g.var(0), floor)
        ll += -0.5 * float((((g - g.mean(0)) ** 2) / var).sum() + len(g) * np.log(2 * np.pi * var).sum())
        ll += len(g) * np.log(len(g) / n)
    return -2 * ll + (k * 2 * q + k - 1) * np.log(n)


def choose_modes(features: np.ndarray, max_modes: int = MAX_MODES, min_images: int = MIN_MODE_IMAGES) -> np.ndarray:
    """``(n,)`` mode label of each training image (``0..k-1``; all 0 for one mode), see module."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 2 * min_images:
        return np.zeros(n, dtype=np.int64)
    sd = x.std(0)
    z = (x - x.mean(0)) / np.maximum(sd, 1e-3 * max(float(np.median(sd)), 1e-6))
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    z = u[:, : min(MODE_DIMS, n - 1)] * s[: min(MODE_DIMS, n - 1)]
    best, best_bic = np.zeros(n, dtype=np.int64), _bic(z, np.zeros(n, dtype=np.int64))
    rng = np.random.default_rng(0)
    for k in range(2, min(max_modes, n // min_images) + 1):
        runs = [_kmeans(z, k, rng) for _ in range(KMEANS_RESTARTS)]
        runs = [r for r in runs if np.bincount(r, minlength=k).min() >= min_images]
        for labels in runs:
            bic = _bic(z, labels)
            if bic < best_bic:
                best, best_bic = labels, bic
    return best


def fit_modes(features: np.ndarray, labels: np.ndarray) -> tuple[dict, list[float]]:
    """The ``features`` entry of a mixture (``{"n", "dim", "modes": [gaussian + "typical"]}``) and each
    training image's held-out mixture distance (its own mode fitted without it, ``HELD_OUT_FOLDS`` folds)."""
    from biomedseg.trust.gaussian import feature_distance, fit_feature_gaussian, held_out_feature_distances

    x = np.asarray(features, dtype=np.float64)
    modes, own = [], np.empty(len(x))
    for j in range(int(labels.max()) + 1):
        held = np.asarray(held_out_feature_distances(x[labels == j]))
        own[labels == j] = held
        modes.append({**fit_feature_gaussian(x[labels == j]), "typical": float(np.median(held))})
    held_out = []
    for i, v in enumerate(x):
        others = [feature_distance(m, v) / m["typical"] for j, m in enumerate(modes) if j != labels[i]]
        held_out.append(min([own[i] / modes[labels[i]]["typical"], *others]))
    return {"n": len(x), "dim": x.shape[1], "modes": modes}, held_out


def mixture_distance(features: dict, vector: np.ndarray) -> float:
    """Feature distance of one vector: :func:`~.gaussian.feature_distance` under a single Gaussian
    (one mode, also every ``trust.json`` written before modes existed), else the smallest
    ``distance / typical`` over the modes."""
    from biomedseg.trust.gaussian import feature_distance

    if "modes" not in features:
        return feature_distance(features, vector)
    return min(feature_distance(m, vector) / m["typical"] for m in features["modes"])
