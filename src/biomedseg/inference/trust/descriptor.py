"""A compact, JSON-able description of what a run was trained on, for out-of-distribution scores.

:func:`describe_training_data` stores (``RUN/trust.json`` through :func:`write_description`):

- ``channels``: the network's input channels; ``colour``: whether any training image is real
  colour (three channels that differ), ``grey``: whether any is grey;
- ``pixel_size``: ``{"median": [y, x] µm or None, "known": count}``;
- ``image_sizes``: ``{"n", "min", "median", "max"}`` as ``[H, W]``;
- ``intensity``: per input channel (after :func:`~biomedseg.io.conform_channels`, in the
  image's own units) ``low``/``high`` (0.5th/99.5th percentiles of a fixed sample of the training
  pixels) and the pooled histogram of ``INTENSITY_BINS`` equal bins between them plus one bin
  below and one above (sums to 1);
- ``features``: the globally pooled bottleneck features of the training images
  (:mod:`.features`) as a shrunk low-rank Gaussian: ``mean (D,)``, the first ``r <= MAX_RANK``
  principal ``components (r, D)`` with their ``variances (r,)`` and one ``residual_variance`` for
  the remaining ``D - r`` directions (each variance shrunk towards the average variance by
  ``SHRINKAGE``), ``n`` images and ``dim`` D; ``None`` when the architecture's bottleneck is
  unknown. Size: ``(r + 1) * D`` numbers, whatever the number of training images. The
  Mahalanobis distance under this covariance is :func:`feature_distance`;
- ``thresholds`` (added by :func:`build_description` / :func:`~.ood.calibrate_thresholds`): per
  part, the score above which an image is flagged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: Histogram bins between the robust bounds (plus one below and one above).
INTENSITY_BINS = 64
#: Percentiles of the training pixels used as histogram bounds.
INTENSITY_BOUNDS = (0.5, 99.5)
#: Pixels sampled per image and channel for the bounds.
SAMPLE_PER_IMAGE = 4096
#: Largest number of principal directions of the feature covariance stored.
MAX_RANK = 32
#: Weight of the average variance in each stored variance (covariance shrinkage).
SHRINKAGE = 0.1
#: Training images described at most (a fixed, evenly spaced subset beyond).
MAX_IMAGES = 400


def is_colour(image: np.ndarray) -> bool:
    """Three channels that are not all equal."""
    from biomedseg.io import is_grey_rgb

    return image.ndim == 3 and image.shape[2] == 3 and not is_grey_rgb(image)


def channel_histogram(image: np.ndarray, low, high, bins: int = INTENSITY_BINS) -> np.ndarray:
    """``(H, W, C)`` -> ``(C, bins + 2)`` normalised histograms (first/last: below ``low``/above
    ``high``)."""
    out = []
    for c in range(image.shape[2]):
        v = image[..., c].astype(np.float64).ravel()
        lo, hi = float(low[c]), float(high[c])
        width = (hi - lo) / bins if hi > lo else 1.0
        idx = np.floor((v - lo) / width).astype(np.int64) + 1
        h = np.bincount(np.clip(idx, 0, bins + 1), minlength=bins + 2).astype(np.float64)
        out.append(h / max(h.sum(), 1.0))
    return np.array(out)


def fit_feature_gaussian(features: np.ndarray, max_rank: int = MAX_RANK, shrinkage: float = SHRINKAGE) -> dict:
    """``(N, D)`` pooled features -> the low-rank shrunk Gaussian stored under ``features``."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2 / max(n - 1, 1)
    total = float(centred.var(axis=0, ddof=1).sum()) if n > 1 else 0.0
    avg = max(total / d, 1e-8)
    r = int(min(max_rank, max(n - 1, 0), d))
    rest = max(total - float(var[:r].sum()), 0.0) / max(d - r, 1)
    return {"n": n, "dim": d, "mean": mean.tolist(), "components": vt[:r].tolist(),
            "variances": ((1 - shrinkage) * var[:r] + shrinkage * avg).tolist(),
            "residual_variance": (1 - shrinkage) * rest + shrinkage * avg}


def feature_distance(gaussian: dict, vector: np.ndarray) -> float:
    """Squared Mahalanobis distance of one feature vector under :func:`fit_feature_gaussian`'s
    covariance, divided by the dimension (about 1 for a typical training image)."""
    d = np.asarray(vector, dtype=np.float64) - np.asarray(gaussian["mean"])
    comps = np.asarray(gaussian["components"], dtype=np.float64).reshape(-1, d.size)
    proj = comps @ d
    inside = float((proj ** 2 / np.asarray(gaussian["variances"], dtype=np.float64)).sum()) if proj.size else 0.0
    residual = max(float(d @ d) - float(proj @ proj), 0.0) / float(gaussian["residual_variance"])
    return (inside + residual) / d.size


def _sizes(shapes: list[tuple[int, int]]) -> dict:
    a = np.array(shapes, dtype=np.int64).reshape(-1, 2)
    if not len(a):
        return {"n": 0, "min": None, "median": None, "max": None}
    return {"n": len(a), "min": a.min(0).tolist(), "median": np.median(a, 0).tolist(), "max": a.max(0).tolist()}


def _pixel_sizes(pixel_sizes) -> dict:
    known = [tuple(float(v) for v in p) for p in pixel_sizes if p is not None]
    return {"median": np.median(np.array(known), 0).tolist() if known else None, "known": len(known)}


def _every(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def describe_training_data(loaded_run, images: Iterable[np.ndarray], pixel_sizes, predictor=None,
                           max_images: int = MAX_IMAGES) -> dict:
    """Describe the training images (``(H, W, C)`` raw arrays, with their ``(y, x)`` µm pixel sizes
    or ``None``) as the module docstring says; the network runs once over each image (through
    ``predictor``, by default ``loaded_run.predictor()``) for the features."""
    from biomedseg.inference.trust.features import predict_with_features
    from biomedseg.io import conform_channels

    pairs = _every(list(zip(images, pixel_sizes)), max_images)
    if not pairs:
        raise ValueError("no training images to describe")
    predictor = predictor or loaded_run.predictor()
    rng = np.random.default_rng(0)
    channels = loaded_run.info.channels
    shapes, samples, colour, vectors = [], [], [], []
    for image, size in pairs:
        shapes.append(image.shape[:2])
        colour.append(is_colour(image))
        x = conform_channels(image, channels).reshape(-1, channels)
        samples.append(x[rng.integers(0, len(x), size=min(SAMPLE_PER_IMAGE, len(x)))].astype(np.float64))
        vectors.append(predict_with_features(loaded_run, predictor, image, size)[1])
    low, high = np.percentile(np.concatenate(samples), INTENSITY_BOUNDS, axis=0)
    hist = np.mean([channel_histogram(conform_channels(img, channels), low, high) for img, _ in pairs], axis=0)
    known = [v for v in vectors if v is not None]
    return {"version": 1, "channels": channels, "colour": any(colour), "grey": not all(colour),
            "pixel_size": _pixel_sizes([s for _, s in pairs]), "image_sizes": _sizes(shapes),
            "intensity": {"bins": INTENSITY_BINS, "low": low.tolist(), "high": high.tolist(), "histogram": hist.tolist()},
            "features": fit_feature_gaussian(np.stack(known)) if len(known) == len(vectors) else None}


def write_description(run_dir, description: dict) -> Path:
    """Write ``RUN/trust.json`` (atomic); returns its path."""
    from biomedseg.io.writers import write_json
    from biomedseg.runs.layout import RunPaths

    path = RunPaths(run_dir).trust
    write_json(path, description)
    return path


def read_description(run_dir) -> dict | None:
    """``RUN/trust.json`` or ``None`` when the run has none (trained before it existed)."""
    from biomedseg.runs.layout import RunPaths

    path = RunPaths(run_dir).trust
    if not path.is_file():
        return None
    return json.loads(path.read_text())
