"""How much brightness, contrast and colour vary between the training images, and the intensity
augmentation ranges that follow.

:func:`intensity_variation` measures each image's mean and standard deviation per channel in
units of the dataset's pooled standard deviation (the units of the normalised images the
augmentations act on), then the spread between images:

- ``brightness_spread``: std over images of the image's mean (averaged over channels);
- ``contrast_spread``: std over images of the log of the image's std (averaged over channels);
- RGB only: ``colour_shift_spread`` / ``colour_scale_spread``, the same for each channel's
  departure from the image's channel average (stain and white-balance differences), as the
  root mean square over channels.

Each augmentation range is :data:`SPREAD_FACTOR` x the measured spread (a uniform draw in
``[-d, d]`` has standard deviation ``d / sqrt(3)``: the augmentation then varies images as much
as they vary among themselves), kept between a floor (a perfectly uniform dataset still gets
mild augmentation, against over-fitting) and a cap (beyond it images stop looking like the data).
Factors are drawn in ``[exp(-d), exp(d)]`` with ``d`` from the spread of log standard deviations.
"""

from __future__ import annotations

import math

import numpy as np

from biomedseg.io.images import conform_channels

__all__ = ["BRIGHTNESS_DELTA", "CHANNEL_SCALE", "CHANNEL_SHIFT", "CONTRAST_LOG", "SPREAD_FACTOR", "intensity_variation"]

#: an augmentation range ``[-d, d]`` has ``d`` this many times the spread measured between the
#: images: the standard deviation of a uniform draw then equals the measured spread
SPREAD_FACTOR = math.sqrt(3.0)
#: brightness offset ``delta`` (z-score units): floor and cap
BRIGHTNESS_DELTA = (0.1, 0.5)
#: contrast factor range ``[exp(-x), exp(x)]``: floor and cap of ``x``
CONTRAST_LOG = (math.log(1.1), math.log(1.5))
#: per-channel offset (z-score units, RGB): floor and cap
CHANNEL_SHIFT = (0.05, 0.3)
#: per-channel factor range ``[exp(-x), exp(x)]`` (RGB): floor and cap of ``x``
CHANNEL_SCALE = (math.log(1.05), math.log(1.25))
#: pixels per image the statistics are taken from (a regular stride over larger images)
MAX_PIXELS = 1 << 16


def _image_stats(image: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ``(C,)`` of one image, on a regular subsample of its pixels."""
    img = conform_channels(np.asarray(image), channels)
    stride = max(1, math.isqrt(img.shape[0] * img.shape[1] // MAX_PIXELS))
    x = img[::stride, ::stride].reshape(-1, channels).astype(np.float64)
    return x.mean(axis=0), x.std(axis=0)


def _bounded(spread: float, bounds: tuple[float, float]) -> float:
    return float(min(max(SPREAD_FACTOR * spread, bounds[0]), bounds[1]))


def _spreads(z_mean: np.ndarray, log_std: np.ndarray) -> dict:
    """Between-image spreads of ``(n, C)`` standardised means and log stds."""
    out = {"brightness_spread": float(z_mean.mean(axis=1).std()), "contrast_spread": float(log_std.mean(axis=1).std())}
    if z_mean.shape[1] > 1:
        dm = z_mean - z_mean.mean(axis=1, keepdims=True)
        ds = log_std - log_std.mean(axis=1, keepdims=True)
        out["colour_shift_spread"] = float(np.sqrt(np.mean(dm.std(axis=0) ** 2)))
        out["colour_scale_spread"] = float(np.sqrt(np.mean(ds.std(axis=0) ** 2)))
    return out


def _ranges(spreads: dict) -> dict:
    """Augmentation ranges from the spreads (see the module docstring)."""
    c = _bounded(spreads["contrast_spread"], CONTRAST_LOG)
    out = {
        "brightness": round(_bounded(spreads["brightness_spread"], BRIGHTNESS_DELTA), 3),
        "contrast": [round(math.exp(-c), 3), round(math.exp(c), 3)],
    }
    if "colour_shift_spread" in spreads:
        s = _bounded(spreads["colour_scale_spread"], CHANNEL_SCALE)
        out["channel_shift"] = round(_bounded(spreads["colour_shift_spread"], CHANNEL_SHIFT), 3)
        out["channel_scale"] = [round(math.exp(-s), 3), round(math.exp(s), 3)]
    return out


def intensity_variation(images, channels: int) -> dict:
    """Intensity variation between ``images`` (``(H, W, C)`` arrays, any dtype), seen with ``channels``
    (1 or 3; images are converted as training converts them).

    Returns ``{"n_images", "channels", "per_channel": {"mean_spread": [C], "log_std_spread": [C]},
    "brightness_spread", "contrast_spread", ["colour_shift_spread", "colour_scale_spread",]
    "ranges": {"brightness": delta, "contrast": [lo, hi], ["channel_shift": delta,
    "channel_scale": [lo, hi]]}}`` (spreads in pooled-std units; plain JSON-able data). With no
    images, every spread is 0 (the floors apply).
    """
    stats = [_image_stats(img, channels) for img in images]
    means = np.array([m for m, _ in stats]).reshape(-1, channels)
    stds = np.array([s for _, s in stats]).reshape(-1, channels)
    if len(means) == 0:
        means, stds = np.zeros((1, channels)), np.ones((1, channels))
    pooled = np.sqrt(np.mean(stds**2, axis=0) + means.var(axis=0))
    pooled = np.where(pooled > 0, pooled, 1.0)
    z_mean = (means - means.mean(axis=0)) / pooled
    log_std = np.log(np.maximum(stds, 0.01 * pooled) / pooled)  # a blank image counts as 1% contrast
    spreads = _spreads(z_mean, log_std)
    return {
        "n_images": len(stats),
        "channels": channels,
        "per_channel": {
            "mean_spread": [round(float(v), 4) for v in z_mean.std(axis=0)],
            "log_std_spread": [round(float(v), 4) for v in log_std.std(axis=0)],
        },
        **{k: round(v, 4) for k, v in spreads.items()},
        "ranges": _ranges(spreads),
    }
