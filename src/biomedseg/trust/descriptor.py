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
  the standardised features (training data of several modes, e.g. fluorescence + brightfield +
  H&E: ``{"n", "dim", "modes": [...]}``, one such Gaussian per mode with its ``typical`` held-out
  distance, :mod:`.modes`; files written before modes have the single Gaussian and still read):
  ``mean (D,)``, ``scale (D,)``, the first ``r <= MAX_RANK`` principal
  ``components (r, D)`` with their ``variances (r,)`` and one ``residual_variance`` for the
  remaining ``D - r`` directions (each variance shrunk towards the average variance by
  ``SHRINKAGE``), ``n`` images and ``dim`` D; ``None`` when the architecture's bottleneck is
  unknown or there are fewer than ``MIN_FEATURE_IMAGES`` training images. Size: ``(r + 2) * D`` numbers,
  whatever the number of training images. The
  Mahalanobis distance under this covariance is :func:`feature_distance`;
- ``held_out``: the training images' intensity distance to the nearest *other* prototype and
  feature distance under a Gaussian (their mode's) fitted without them (``HELD_OUT_FOLDS`` folds): one number per
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

from biomedseg.trust.gaussian import (  # noqa: F401 - part of this module's interface
    HELD_OUT_FOLDS,
    MAX_RANK,
    SHRINKAGE,
    feature_distance,
    fit_feature_gaussian,
    held_out_feature_distances,
)

#: Histogram bins between the robust bounds (plus one below and one above).
INTENSITY_BINS = 64
#: Percentiles of the training pixels used as histogram bounds.
INTENSITY_BOUNDS = (0.5, 99.5)
#: Pixels sampled per image and channel for the bounds.
SAMPLE_PER_IMAGE = 4096
#: Training images described at most (a fixed, evenly spaced subset beyond).
MAX_IMAGES = 400
#: Per-image intensity histograms kept as prototypes (evenly spaced over the training images).
MAX_PROTOTYPES = 64
#: Fewest training images for feature statistics (fewer: ``features`` is ``None``).
MIN_FEATURE_IMAGES = 5


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
    features, held_features = _features(feats)
    return {
        "version": 1,
        "channels": channels,
        "colour": any(colour),
        "grey": not all(colour),
        "pixel_size": _pixel_sizes([s for _, s in pairs]),
        "image_sizes": _sizes([i.shape[:2] for i, _ in pairs]),
        "intensity": intensity,
        "features": features,
        "held_out": {"intensity": held_intensity, "features": held_features},
    }


def _features(feats: np.ndarray | None) -> tuple[dict | None, list[float]]:
    """The ``features`` entry and the training images' held-out distances: one Gaussian
    (:func:`fit_feature_gaussian`), or a mixture (:func:`~.modes.fit_modes`) when
    :func:`~.modes.choose_modes` finds several modes in the pooled features."""
    from biomedseg.trust.modes import choose_modes, fit_modes

    if feats is None:
        return None, []
    labels = choose_modes(feats)
    if labels.max() == 0:
        return fit_feature_gaussian(feats), held_out_feature_distances(feats)
    return fit_modes(feats, labels)


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
