"""Shared pieces of the augmentation transforms: :class:`Compose`, the applied-with-probability
base class and argument checks.

Every transform is a callable ``t(image, mask, rng) -> (image, mask)`` with image
``(C, H, W) float32`` (normalised), mask ``(H, W) int64`` and a ``numpy.random.Generator``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

#: ``numpy.pad`` modes accepted for boundary handling
PAD_MODES = ("symmetric", "reflect", "constant")
#: numpy.pad mode -> scipy.ndimage boundary mode with the same meaning
NDIMAGE_MODE = {"symmetric": "reflect", "reflect": "mirror", "constant": "constant"}


def parse_range(value, name: str) -> tuple[float, float]:
    """``[low, high]`` -> ``(low, high)`` floats; ``ValueError`` if not a pair or low > high."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a [low, high] pair, got {value!r}") from None
    if lo > hi:
        raise ValueError(f"{name}: low {lo} > high {hi}")
    return lo, hi


def check_probability(p) -> float:
    """``p`` as a float in ``[0, 1]``; ``ValueError`` otherwise."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return p


def check_pad_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`PAD_MODES`; ``ValueError`` otherwise."""
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {', '.join(PAD_MODES)}")
    return mode


class RandomTransform:
    """Base: ``p`` = probability of applying; subclasses implement ``apply``."""

    p: float = 1.0

    def __call__(self, image, mask, rng: np.random.Generator):
        if self.p >= 1.0 or rng.random() < self.p:
            return self.apply(image, mask, rng)
        return image, mask

    def apply(self, image, mask, rng):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image, mask, rng):
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)
