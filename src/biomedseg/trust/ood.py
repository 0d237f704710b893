"""Out-of-distribution scores of one image against a run's training description (:mod:`.descriptor`).

Parts (each ``None`` when it cannot be measured):

- ``pixel_size``: ``|log2(pixel size / training median)|`` (mean of y and x), ``None`` when either
  is unknown;
- ``intensity``: the earth mover's distance between the image's histogram and the nearest training
  image's (of the stored prototypes), per channel in units of the training range (0.5th..99.5th
  percentile), the largest over the channels;
- ``features``: squared Mahalanobis distance of the pooled bottleneck features divided by their
  dimension (:func:`~.descriptor.feature_distance`).

Training data with several modes (:mod:`.modes`): the feature distance is to the nearest mode,
divided by that mode's typical distance, so each mode gets its own tightness (intensity: the
nearest per-image prototype already).

Thresholds: :func:`calibrate_thresholds` takes the parts of the validation images and the held-out
training images and keeps per part the ``THRESHOLD_PERCENTILE`` th percentile, for intensity and
features at least the log-normal tolerance bound of that percentile (few images), never below
``MIN_THRESHOLDS``. An image's
``score`` is its largest ``part / threshold``; above 1 it is flagged, with one plain reason per
part above its threshold (and one when it is colour and the training images are grey, or the
reverse).
"""

from __future__ import annotations

import math

import numpy as np

PARTS = ("pixel_size", "intensity", "features")
#: Percentile of the validation images' parts used as the threshold.
THRESHOLD_PERCENTILE = 99.0
#: Confidence of the tolerance bound that the intensity and feature thresholds are at least: one half,
#: the log-normal estimate of the percentile itself (0.95 made the thresholds of a ten-image run so
#: wide that random colour noise passed the intensity part).
TOLERANCE_CONFIDENCE = 0.5
#: Smallest thresholds: pixel sizes within 25% and tiny histogram shifts are never flagged.
MIN_THRESHOLDS = {"pixel_size": math.log2(1.25), "intensity": 0.02, "features": 1e-6}


def _mean_size(size) -> float | None:
    if size is None:
        return None
    values = [float(v) for v in (size if isinstance(size, (list, tuple)) else [size])]
    return float(np.mean(values)) if values and all(v > 0 for v in values) else None


def pixel_size_part(description: dict, pixel_size) -> float | None:
    """``|log2(pixel size / training median)|`` (means of y and x); ``None`` when either is unknown."""
    train_size, size = _mean_size((description.get("pixel_size") or {}).get("median")), _mean_size(pixel_size)
    return abs(math.log2(size / train_size)) if train_size and size else None


def image_parts(description: dict, image: np.ndarray, pixel_size=None, features=None) -> dict:
    """``{"pixel_size", "intensity", "features"}`` of one raw ``(H, W, C)`` image (see module);
    ``features``: its pooled bottleneck vector (:mod:`.features`) or ``None``."""
    from biomedseg.io import conform_channels
    from biomedseg.trust.descriptor import channel_histogram, nearest_histogram_distance
    from biomedseg.trust.modes import mixture_distance

    parts: dict[str, float | None] = {p: None for p in PARTS}
    parts["pixel_size"] = pixel_size_part(description, pixel_size)
    ref = description["intensity"]
    hist = channel_histogram(conform_channels(image, description["channels"]), ref["low"], ref["high"], ref["bins"])
    parts["intensity"] = nearest_histogram_distance(hist, np.asarray(ref.get("prototypes") or [ref["histogram"]]))
    gaussian = description.get("features")
    if gaussian is not None and features is not None and len(features) == gaussian["dim"]:
        parts["features"] = mixture_distance(gaussian, features)
    return parts


def tolerance_bound(values, coverage: float = THRESHOLD_PERCENTILE / 100, confidence: float = TOLERANCE_CONFIDENCE):
    """Upper one-sided normal tolerance bound of ``log(values)``, back in the values' units (at
    ``confidence`` 0.5: ``exp(mean + z * sd)``, the log-normal estimate of the percentile): with
    ``confidence`` it lies above ``coverage`` of the population the values came from (``k``:
    Natrella's approximation of the tolerance factor); ``None`` for fewer than 3 positive values."""
    from scipy.stats import norm

    v = np.log([x for x in values if x > 0])
    n = v.size
    if n < 3:
        return None
    zp, zg = norm.ppf(coverage), norm.ppf(confidence)
    a, b = 1 - zg**2 / (2 * (n - 1)), zp**2 - zg**2 / n
    k = (zp + math.sqrt(max(zp**2 - a * b, 0.0))) / a
    return float(np.exp(v.mean() + k * v.std(ddof=1)))


def calibrate_thresholds(parts_of_images: list[dict], percentile: float = THRESHOLD_PERCENTILE) -> dict:
    """Per part: the ``percentile`` of the values over the (validation and held-out training)
    images (the smallest value with that share of the images at or below it: the largest of fewer
    than 100 images); for ``intensity`` and ``features`` at least their :func:`tolerance_bound`
    (the largest of a few values lies below the percentile it stands for: a new image of the same
    data exceeds the largest of ``n`` with probability ``1 / (n + 1)``); at least ``MIN_THRESHOLDS``;
    a part no image has is left out."""
    out = {}
    for p in PARTS:
        values = [d[p] for d in parts_of_images if d.get(p) is not None]
        if values:
            bound = tolerance_bound(values) if p in ("intensity", "features") else None
            out[p] = max(float(np.percentile(values, percentile, method="higher")), bound or 0.0, MIN_THRESHOLDS[p])
    return out


def _reasons(description: dict, image: np.ndarray, ratios: dict, pixel_size) -> list[str]:
    from biomedseg.trust.descriptor import is_colour

    reasons = []
    if ratios.get("pixel_size", 0) > 1:
        train = _mean_size(description["pixel_size"]["median"])
        reasons.append(f"pixel size {_mean_size(pixel_size):.3g} µm vs {train:.3g} µm in training")
    if ratios.get("intensity", 0) > 1:
        reasons.append("intensity unlike training")
    if ratios.get("features", 0) > 1:
        reasons.append("features unlike training")
    colour = is_colour(image)
    if colour and not description.get("colour", False):
        reasons.append("colour image; the training images are grey")
    elif not colour and not description.get("grey", True):
        reasons.append("grey image; the training images are in colour")
    return reasons


def ood_scores(
    loaded_run, description: dict, image: np.ndarray, pixel_size=None, features=None, predictor=None
) -> dict:
    """``{"score", "flag", "reasons": [...], "parts": {...}}`` of one raw ``(H, W, C)`` image.

    ``features``: the image's pooled bottleneck features when the caller already has them
    (:func:`~.features.predict_with_features` gives them with the probabilities); otherwise, when
    the description has features, the network runs over the image (``predictor``, by default
    ``loaded_run.predictor()``). ``score``: the largest part over its threshold (``None`` without
    thresholds); ``flag``: ``score > 1`` or a colour/grey mismatch.
    """
    if features is None and description.get("features") is not None:
        from biomedseg.trust.features import predict_with_features

        features = predict_with_features(loaded_run, predictor or loaded_run.predictor(), image, pixel_size)[1]
    parts = image_parts(description, image, pixel_size, features)
    thresholds = description.get("thresholds") or {}
    ratios = {p: parts[p] / thresholds[p] for p in PARTS if parts[p] is not None and p in thresholds}
    reasons = _reasons(description, image, ratios, pixel_size)
    score = max(ratios.values()) if ratios else None
    return {"score": score, "flag": bool(reasons), "reasons": reasons, "parts": parts}


def build_description(
    loaded_run, train_images: list, train_pixel_sizes: list, val_images: list, val_pixel_sizes: list, predictor=None
) -> dict:
    """:func:`~.descriptor.describe_training_data` of the training images with ``thresholds``
    (:func:`calibrate_thresholds`) over the validation images and the training images' held-out
    distances (``held_out``: each measured without the image itself), so that even a small
    validation split gives a usable percentile; pixel sizes from both as they are."""
    from biomedseg.trust.descriptor import describe_training_data
    from biomedseg.trust.features import predict_with_features

    predictor = predictor or loaded_run.predictor()
    description = describe_training_data(loaded_run, train_images, train_pixel_sizes, predictor)
    parts = [
        image_parts(description, img, size, predict_with_features(loaded_run, predictor, img, size)[1])
        for img, size in zip(val_images, val_pixel_sizes)
    ]
    held = description["held_out"]
    parts += [{"intensity": v} for v in held["intensity"]] + [{"features": v} for v in held["features"]]
    parts += [{"pixel_size": pixel_size_part(description, size)} for size in train_pixel_sizes]
    description["thresholds"] = calibrate_thresholds(parts)
    description["thresholds_from"] = (
        f"{len(val_images)} validation images + {len(held['features'] or held['intensity'])} training images held out"
    )
    return description
