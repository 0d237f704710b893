"""Intensity augmentations: noise, brightness, contrast, per-channel jitter (colour), gamma, blur.
The mask is never changed.

Each transform is a callable ``t(image, mask, rng) -> (image, mask)`` with image
``(C, H, W) float32`` (normalised, z-score units) returned as ``float32``, mask ``(H, W) int64``
returned unchanged, applied with probability ``p``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from biomedseg.transforms.augment_base import RandomTransform, check_probability, parse_range

__all__ = ["Brightness", "ChannelJitter", "Contrast", "Gamma", "GaussianBlur", "GaussianNoise", "UniformNoise"]


class GaussianNoise(RandomTransform):
    """Add N(0, sigma^2) per pixel, sigma uniform in ``std`` (z-score units)."""

    def __init__(self, p: float = 0.2, std: Sequence[float] = (0.0, 0.1)):
        self.p, self.std = check_probability(p), parse_range(std, "std")

    def apply(self, image, mask, rng):
        sigma = np.float32(rng.uniform(*self.std))  # float32 draws: half the time of float64 ones
        return (image + rng.standard_normal(image.shape, dtype=np.float32) * sigma).astype(np.float32), mask


class UniformNoise(RandomTransform):
    """Add U(-amplitude, amplitude) per pixel."""

    def __init__(self, p: float = 0.2, amplitude: float = 0.1):
        self.p, self.amplitude = check_probability(p), float(amplitude)

    def apply(self, image, mask, rng):
        noise = rng.uniform(-self.amplitude, self.amplitude, image.shape).astype(np.float32)
        return (image + noise).astype(np.float32), mask


class Brightness(RandomTransform):
    """Add one offset, uniform in ``[-delta, delta]`` (z-score units), to every pixel."""

    def __init__(self, p: float = 0.3, delta: float = 0.2):
        self.p, self.delta = check_probability(p), float(delta)

    def apply(self, image, mask, rng):
        return (image + np.float32(rng.uniform(-self.delta, self.delta))).astype(np.float32), mask


class Contrast(RandomTransform):
    """Scale each channel about its mean by a factor uniform in ``factor``."""

    def __init__(self, p: float = 0.3, factor: Sequence[float] = (0.8, 1.25)):
        self.p, self.factor = check_probability(p), parse_range(factor, "factor")

    def apply(self, image, mask, rng):
        f = np.float32(rng.uniform(*self.factor))
        mean = image.mean(axis=(1, 2), keepdims=True)
        return ((image - mean) * f + mean).astype(np.float32), mask


class ChannelJitter(RandomTransform):
    """Colour (stain, white balance) variation: each channel independently ``x_c * a_c + b_c``,
    ``a_c`` uniform in ``scale``, ``b_c`` uniform in ``[-shift, shift]`` (z-score units, so the
    scaling is about the dataset's mean)."""

    def __init__(self, p: float = 0.3, scale: Sequence[float] = (0.9, 1.1), shift: float = 0.1):
        self.p, self.scale, self.shift = check_probability(p), parse_range(scale, "scale"), float(shift)
        if self.shift < 0:
            raise ValueError("shift must be >= 0")

    def apply(self, image, mask, rng):
        c = image.shape[0]
        a = rng.uniform(*self.scale, size=(c, 1, 1)).astype(np.float32)
        b = rng.uniform(-self.shift, self.shift, size=(c, 1, 1)).astype(np.float32)
        return (image * a + b).astype(np.float32), mask


class Gamma(RandomTransform):
    """``x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` per channel (lo/hi: the channel's
    min/max), ``g`` log-uniform in ``gamma``; the value range is kept."""

    def __init__(self, p: float = 0.3, gamma: Sequence[float] = (0.75, 1.35)):
        self.p, self.gamma = check_probability(p), parse_range(gamma, "gamma")
        if self.gamma[0] <= 0:
            raise ValueError("gamma must be positive")

    def apply(self, image, mask, rng):
        g = math.exp(rng.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))
        lo = image.min(axis=(1, 2), keepdims=True)
        span = np.maximum(image.max(axis=(1, 2), keepdims=True) - lo, 1e-6)
        return (lo + span * np.power((image - lo) / span, g)).astype(np.float32), mask


class GaussianBlur(RandomTransform):
    """Gaussian smoothing of every channel, sigma (pixels) uniform in ``sigma``."""

    def __init__(self, p: float = 0.15, sigma: Sequence[float] = (0.5, 1.0)):
        self.p, self.sigma = check_probability(p), parse_range(sigma, "sigma")

    def apply(self, image, mask, rng):
        s = rng.uniform(*self.sigma)
        return ndimage.gaussian_filter(np.asarray(image, np.float32), (0, s, s), mode="reflect"), mask
