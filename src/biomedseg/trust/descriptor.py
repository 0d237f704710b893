"""A compact, JSON-able description of what a run was trained on, for out-of-distribution scores.

:func:`describe_training_data` stores (``RUN/trust.json`` through :func:`write_description`):

- ``channels``: the network's input channels; ``colour``: whether any training image is real
  colour (three channels that differ), ``grey``: whether any is grey;
- ``pixel_size``: ``{"median": [y, x] µm or None, "known": count}``;
- ``image_sizes``: ``{"n", "min", "median", "max"}`` as ``[H, W]``;
- ``intensity``: per input channel (after :func:`~biomedseg.io.conform_channels`, in the
  image's own units) ``low``/``high`` (0.5th/99.5th percentiles of a fixed sample of the training
  pixels), the pooled ``histogram`` of ``INTENSITY_BINS`` equal bins between them plus one bin
  below and one above (sums to 1), and up to ``MAX_PROTOTYPES`` per-image histograms
  (``prototypes``): an image is compared with its nearest prototype, so training data mixing
  several stains or modalities is not reduced to one average;
- ``features``: the globally pooled bottleneck features of the training images
  (:mod:`.features`: per channel mean and standard deviation) as a shrunk low-rank Gaussian of
  the standardised features: ``mean (D,)``, ``scale (D,)``, the first ``r <= MAX_RANK`` principal
  ``components (r, D)`` with their ``variances (r,)`` and one ``residual_variance`` for the
  remaining ``D - r`` directions (each variance shrunk towards the average variance by
  ``SHRINKAGE``), ``n`` images and ``dim`` D; ``None`` when the architecture's bottleneck is
  unknown or there are fewer than ``MIN_FEATURE_IMAGES`` training images. Size: ``(r + 2) * D`` numbers,
  whatever the number of training images. The
  Mahalanobis distance under this covariance is :func:`feature_distance`;
- ``held_out``: the training images' intensity distance to the nearest *other* prototype and
  feature distance under a Gaussian fitted without them (``HELD_OUT_FOLDS`` folds): one number per
  image per part, what a new image of the same data scores, used with the validation images to set
  the thresholds;
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
#: Per-image intensity histograms kept as prototypes (evenly spaced over the training images).
MAX_PROTOTYPES = 64
#: Fewest training images for feature statistics (fewer: ``features`` is ``None``).
MIN_FEATURE_IMAGES = 5
#: Folds of the held-out feature distances of the training images.
HELD_OUT_FOLDS = 5


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


def nearest_histogram_distance(hist: np.ndarray, prototypes: np.ndarray, skip: int | None = None) -> float:
    """Smallest per-image intensity distance (:func:`histogram_distance`) of ``hist`` to the
    training ``prototypes`` ``(P, C, bins + 2)``, leaving out prototype ``skip``."""
    d = [histogram_distance(hist, p) for i, p in enumerate(prototypes) if i != skip]
    return float(min(d)) if d else 0.0


def histogram_distance(histogram: np.ndarray, reference: np.ndarray) -> float:
    """Largest per-channel earth mover's distance of two ``(C, bins + 2)`` histograms, in units of
    the range covered by the inner bins (the outer bins count as one bin beyond each end)."""
    h, r = np.atleast_2d(histogram), np.atleast_2d(reference)
    return float((np.abs(np.cumsum(h - r, axis=1)).sum(axis=1) / (h.shape[1] - 2)).max())


def _intensity(images: list[np.ndarray], channels: int) -> tuple[dict, list[float]]:
    """The ``intensity`` entry and the held-out distances of the training images to the prototypes."""
    from biomedseg.io import conform_channels

    rng = np.random.default_rng(0)
    conformed = [conform_channels(img, channels) for img in images]
    sample = np.concatenate(
        [x.reshape(-1, channels)[rng.integers(0, x.shape[0] * x.shape[1], size=SAMPLE_PER_IMAGE)] for x in conformed]
    )
    low, high = np.percentile(sample.astype(np.float64), INTENSITY_BOUNDS, axis=0)
    hists = np.array([channel_histogram(x, low, high) for x in conformed])
    keep = _every(list(range(len(hists))), MAX_PROTOTYPES)
    protos = hists[keep]
    held_out = (
        [nearest_histogram_distance(h, protos, skip=keep.index(i) if i in keep else None) for i, h in enumerate(hists)]
        if len(protos) > 1
        else []
    )
    return {
        "bins": INTENSITY_BINS,
        "low": low.tolist(),
        "high": high.tolist(),
        "histogram": hists.mean(0).tolist(),
        "prototypes": protos.tolist(),
    }, held_out


def describe_training_data(
    loaded_run, images: Iterable[np.ndarray], pixel_sizes, predictor=None, max_images: int = MAX_IMAGES
) -> dict:
    """Describe the training images (``(H, W, C)`` raw arrays, with their ``(y, x)`` µm pixel sizes
    or ``None``) as the module docstring says; the network runs once over each image (through
    ``predictor``, by default ``loaded_run.predictor()``) for the features. ``held_out``: the
    intensity and feature distances of the training images measured without themselves (for
    :func:`~.ood.calibrate_thresholds`)."""
    from biomedseg.trust.features import predict_with_features

    pairs = _every(list(zip(images, pixel_sizes)), max_images)
    if not pairs:
        raise ValueError("no training images to describe")
    predictor = predictor or loaded_run.predictor()
    channels = loaded_run.info.channels
    colour = [is_colour(img) for img, _ in pairs]
    vectors = [predict_with_features(loaded_run, predictor, img, size)[1] for img, size in pairs]
    intensity, held_intensity = _intensity([img for img, _ in pairs], channels)
    feats = np.stack(vectors) if all(v is not None for v in vectors) and len(vectors) >= MIN_FEATURE_IMAGES else None
    return {
        "version": 1,
        "channels": channels,
        "colour": any(colour),
        "grey": not all(colour),
        "pixel_size": _pixel_sizes([s for _, s in pairs]),
        "image_sizes": _sizes([i.shape[:2] for i, _ in pairs]),
        "intensity": intensity,
        "features": None if feats is None else fit_feature_gaussian(feats),
        "held_out": {
            "intensity": held_intensity,
            "features": [] if feats is None else held_out_feature_distances(feats),
        },
    }


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
