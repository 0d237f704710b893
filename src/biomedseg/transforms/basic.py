"""The augmentation pipeline of a training run, by preset name or config list.

Arrays: image ``(C, H, W) float32`` (already normalised), mask ``(H, W) int64``. Every
transform is a small callable ``t(image, mask, rng) -> (image, mask)`` using the numpy
``Generator`` it is given, so augmentation is reproducible from the training seed. The
transforms and presets live in :mod:`biomedseg.transforms.augment`; :class:`Compose` in
:mod:`biomedseg.transforms.augment_base` (re-exported here).
"""

from __future__ import annotations

from biomedseg.core.errors import UserError
from biomedseg.transforms.augment import build_augmentations, build_preset
from biomedseg.transforms.augment_base import Compose, Transform

__all__ = ["Compose", "Transform", "build_augmenter"]


def build_augmenter(preset: str | list) -> Compose:
    """Augmentation pipeline by preset name (``none``, ``flips``, ``default``, ``strong``; see
    :func:`biomedseg.transforms.augment.build_preset`) or from a config list of
    ``{name: ..., p: ..., ...}`` entries (:func:`biomedseg.transforms.augment.build_augmentations`)."""
    if isinstance(preset, (list, tuple)):
        return build_augmentations(list(preset))
    pipeline = build_preset(preset)
    if pipeline is None:
        raise UserError(f"unknown augmentation preset {preset!r}")
    return pipeline
