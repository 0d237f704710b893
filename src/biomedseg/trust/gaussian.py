"""One shrunk low-rank Gaussian of pooled bottleneck features (:mod:`.descriptor` ``features``) and the
squared Mahalanobis distance under it; :mod:`.modes` fits one per mode of the training data."""

from __future__ import annotations

import numpy as np

#: Largest number of principal directions of the feature covariance stored.
MAX_RANK = 32
#: Weight of the average variance in each stored variance (covariance shrinkage).
SHRINKAGE = 0.1
#: Folds of the held-out feature distances of the training images.
HELD_OUT_FOLDS = 5


def fit_feature_gaussian(features: np.ndarray, max_rank: int = MAX_RANK, shrinkage: float = SHRINKAGE) -> dict:
    """``(N, D)`` pooled features -> the low-rank shrunk Gaussian stored under ``features``: each
    dimension standardised first (``mean``, ``scale``: its standard deviation, floored), then
    principal directions of the standardised features with shrunk variances."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1) if n > 1 else np.ones(d)
    scale = np.maximum(sd, 1e-3 * max(float(np.median(sd)), 1e-6))
    z = (x - mean) / scale
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    var = s**2 / max(n - 1, 1)
    total = float((z**2).sum() / max(n - 1, 1))
    avg = max(total / d, 1e-8)
    r = int(min(max_rank, max(n - 1, 0), d))
    rest = max(total - float(var[:r].sum()), 0.0) / max(d - r, 1)
    return {
        "n": n,
        "dim": d,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "components": vt[:r].tolist(),
        "variances": ((1 - shrinkage) * var[:r] + shrinkage * avg).tolist(),
        "residual_variance": (1 - shrinkage) * rest + shrinkage * avg,
    }


def feature_distance(gaussian: dict, vector: np.ndarray) -> float:
    """Squared Mahalanobis distance of one feature vector under :func:`fit_feature_gaussian`'s
    covariance, divided by the dimension (about 1 for a typical training image)."""
    d = (np.asarray(vector, dtype=np.float64) - np.asarray(gaussian["mean"])) / np.asarray(gaussian["scale"])
    comps = np.asarray(gaussian["components"], dtype=np.float64).reshape(-1, d.size)
    proj = comps @ d
    inside = float((proj**2 / np.asarray(gaussian["variances"], dtype=np.float64)).sum()) if proj.size else 0.0
    residual = max(float(d @ d) - float(proj @ proj), 0.0) / float(gaussian["residual_variance"])
    return (inside + residual) / d.size


def held_out_feature_distances(features: np.ndarray, folds: int = HELD_OUT_FOLDS) -> list[float]:
    """Each training image's :func:`feature_distance` under a Gaussian fitted without it (``folds``-fold):
    what a new image from the same data scores, for the threshold (fitted images sit too close)."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 4:
        return []
    fold = np.arange(n) % min(folds, n)
    out = np.empty(n)
    for k in np.unique(fold):
        g = fit_feature_gaussian(x[fold != k])
        out[fold == k] = [feature_distance(g, v) for v in x[fold == k]]
    return out.tolist()
