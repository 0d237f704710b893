"""Spatial and intensity transforms applied to an image and its mask together.

Arrays: image ``(C, H, W) float32`` (already normalised), mask ``(H, W) int64``. Every
transform is a small callable ``t(image, mask, rng) -> (image, mask)`` using the numpy
``Generator`` it is given, so augmentation is reproducible from the training seed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def random_flip_rot90(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    """One of the 8 symmetries of the square (flips and 90-degree rotations), uniformly."""
    k = int(rng.integers(4))
    if k:
        image = np.rot90(image, k, axes=(1, 2))
        mask = np.rot90(mask, k, axes=(0, 1))
    if rng.random() < 0.5:
        image = image[:, :, ::-1]
        mask = mask[:, ::-1]
    return image, mask


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image, mask, rng):
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def build_augmenter(preset: str) -> Compose:
    """Augmentation pipeline by preset name (``none``, ``flips``, ``default``).

    Further presets and transforms are registered by :mod:`biomedseg.transforms.augment`
    when present.
    """
    try:
        from biomedseg.transforms import augment  # richer presets (optional module)

        pipeline = augment.build_preset(preset)
        if pipeline is not None:
            return pipeline
    except ImportError:
        pass
    if preset == "none":
        return Compose([])
    if preset in ("flips", "default"):
        return Compose([random_flip_rot90])
    from biomedseg.errors import UserError

    raise UserError(f"unknown augmentation preset {preset!r}")
