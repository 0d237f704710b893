"""Data augmentation: transforms, presets and config lists.

The transforms live in :mod:`biomedseg.transforms.spatial` and
:mod:`biomedseg.transforms.intensity` (re-exported here); this module holds the name registry,
the presets and the parsing of config lists.

Every transform is a callable ``t(image, mask, rng) -> (image, mask)`` with image
``(C, H, W) float32`` (normalised), mask ``(H, W) int64`` and a ``numpy.random.Generator``;
each is applied with probability ``p``. Spatial transforms move image and mask together
(images interpolated linearly, masks by nearest neighbour, so no new class values appear);
intensity transforms never touch the mask.

Rotation, scaling and elastic deformation are one :class:`Spatial` transform that computes a
single coordinate map and calls ``scipy.ndimage.map_coordinates`` once per channel (order 1)
and once for the mask (order 0); in a config list, consecutive ``rotate`` / ``scale`` /
``elastic`` entries are merged into one such call.

Presets (:func:`build_preset`): ``none``, ``flips`` (the 8 flips/90-degree rotations),
``default`` (flips + mild rotation/scale + brightness/contrast/gamma + noise + blur, each with a
moderate probability) and ``strong`` (wider ranges, higher probabilities, elastic deformation).

Config lists (:func:`build_augmentations`)::

    augment:
      - {name: flip_rot90}
      - {name: rotate, p: 0.5, degrees: 30}
      - {name: scale, p: 0.3, scale: [0.8, 1.25]}
      - {name: elastic, p: 0.2, sigma: 20, magnitude: 4}
      - {name: gamma, p: 0.3, gamma: [0.7, 1.5]}

Names: ``flip``, ``rot90``, ``flip_rot90``, ``rotate``, ``scale``, ``elastic``, ``spatial``,
``gaussian_noise`` (``noise``), ``uniform_noise``, ``brightness``, ``contrast``, ``channel_jitter``,
``gamma``, ``blur`` (``gaussian_blur``), ``crop`` (``random_crop``), ``pad``. ``flip`` with
``vertical: false`` gives left-right flips only; ``rot90`` / ``flip_rot90`` also turn images
upside down (180 degrees), so data with a preferred up-down axis takes neither.

The ``default`` preset is the config list :data:`DEFAULT_AUGMENT`.
"""

from __future__ import annotations

from typing import Any, Sequence

from biomedseg.core.errors import UserError
from biomedseg.transforms.augment_base import Compose
from biomedseg.transforms.intensity import (
    Brightness,
    ChannelJitter,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    UniformNoise,
)
from biomedseg.transforms.spatial import (
    Flip,
    FlipRot90,
    Pad,
    RandomCrop,
    Rot90,
    Spatial,
    warp,  # noqa: F401  (re-exported: was defined here)
)

__all__ = [
    "Brightness",
    "ChannelJitter",
    "Contrast",
    "Flip",
    "FlipRot90",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "Pad",
    "RandomCrop",
    "Rot90",
    "Spatial",
    "UniformNoise",
    "DEFAULT_AUGMENT",
    "PRESETS",
    "TRANSFORMS",
    "build_augmentations",
    "build_preset",
]


# -- registry, presets, config lists ---------------------------------------------------------


def _rotate(p: float = 0.5, degrees: float = 15.0, mode: str = "symmetric") -> Spatial:
    return Spatial(rotate_p=p, degrees=degrees, mode=mode)


def _scale(p: float = 0.5, scale: Sequence[float] = (0.85, 1.15), mode: str = "symmetric") -> Spatial:
    return Spatial(scale_p=p, scale=scale, mode=mode)


def _elastic(p: float = 0.3, sigma: float = 20.0, magnitude: float = 4.0, mode: str = "symmetric") -> Spatial:
    return Spatial(elastic_p=p, sigma=sigma, magnitude=magnitude, mode=mode)


#: name -> factory(**params) for :func:`build_augmentations`.
TRANSFORMS: dict[str, Any] = {
    "flip": Flip,
    "rot90": Rot90,
    "flip_rot90": FlipRot90,
    "flips": FlipRot90,
    "rotate": _rotate,
    "scale": _scale,
    "elastic": _elastic,
    "spatial": Spatial,
    "gaussian_noise": GaussianNoise,
    "noise": GaussianNoise,
    "uniform_noise": UniformNoise,
    "brightness": Brightness,
    "contrast": Contrast,
    "channel_jitter": ChannelJitter,
    "gamma": Gamma,
    "blur": GaussianBlur,
    "gaussian_blur": GaussianBlur,
    "crop": RandomCrop,
    "random_crop": RandomCrop,
    "pad": Pad,
}


def _transform_from_entry(i: int, entry) -> Any:
    """Config entry ``i`` (0-based; a name or ``{name: ..., **params}``) -> transform instance."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise UserError(f"augment entry {i + 1}: expected a mapping with a 'name', got {entry!r}")
    params = dict(entry)
    name = str(params.pop("name")).lower()
    if name not in TRANSFORMS:
        raise UserError(
            f"augment entry {i + 1}: unknown transform {name!r}; choose from {', '.join(sorted(TRANSFORMS))}"
        )
    try:
        return TRANSFORMS[name](**params)
    except (TypeError, ValueError) as exc:
        raise UserError(f"augment entry {i + 1} ({name}): {exc}") from None


def build_augmentations(spec: list[dict]) -> Compose:
    """Pipeline from a config list ``[{name: rotate, p: 0.5, degrees: 30}, ...]`` (in order).

    Consecutive rotate/scale/elastic entries become one :class:`Spatial` resampling. Unknown
    names or parameters raise :class:`UserError`.
    """
    if not isinstance(spec, (list, tuple)):
        raise UserError(f"augment: expected a list of {{name: ..., p: ...}} entries, got {spec!r}")
    transforms: list = []
    for i, entry in enumerate(spec):
        t = _transform_from_entry(i, entry)
        if isinstance(t, Spatial) and transforms and isinstance(transforms[-1], Spatial):
            merged = transforms[-1].merged(t)
            if merged is not None:
                transforms[-1] = merged
                continue
        transforms.append(t)
    return Compose(transforms)


#: the ``default`` preset as a config list: all 8 flips/90-degree rotations, mild rotation and
#: scaling (one resampling), brightness/contrast/gamma, noise and blur, each with a moderate
#: probability. The planner's data-driven list (``training.plan_augment``) starts from it.
DEFAULT_AUGMENT: tuple[dict, ...] = (
    {"name": "flip_rot90"},
    {"name": "rotate", "p": 0.25, "degrees": 15},
    {"name": "scale", "p": 0.25, "scale": [0.85, 1.15]},
    {"name": "brightness", "p": 0.3, "delta": 0.2},
    {"name": "contrast", "p": 0.3, "factor": [0.8, 1.25]},
    {"name": "gamma", "p": 0.3, "gamma": [0.75, 1.35]},
    {"name": "gaussian_noise", "p": 0.2, "std": [0.0, 0.1]},
    {"name": "blur", "p": 0.15, "sigma": [0.5, 1.0]},
)


def _default() -> Compose:
    return build_augmentations(list(DEFAULT_AUGMENT))


def _strong() -> Compose:
    return Compose(
        [
            FlipRot90(),
            Spatial(rotate_p=0.5, degrees=45, scale_p=0.5, scale=(0.7, 1.4), elastic_p=0.3, sigma=20, magnitude=5),
            Brightness(p=0.5, delta=0.3),
            Contrast(p=0.5, factor=(0.65, 1.5)),
            Gamma(p=0.5, gamma=(0.6, 1.6)),
            GaussianNoise(p=0.3, std=(0.0, 0.15)),
            GaussianBlur(p=0.25, sigma=(0.5, 1.5)),
        ]
    )


#: preset name -> pipeline factory.
PRESETS = {"none": lambda: Compose([]), "flips": lambda: Compose([FlipRot90()]), "default": _default, "strong": _strong}


def build_preset(name: str) -> Compose | None:
    """Pipeline of preset ``name``, or None when there is no such preset."""
    factory = PRESETS.get(str(name).lower())
    return factory() if factory is not None else None
