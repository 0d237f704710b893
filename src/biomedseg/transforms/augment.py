"""Data augmentation: transforms, presets and config lists.

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
``gaussian_noise`` (``noise``), ``uniform_noise``, ``brightness``, ``contrast``, ``gamma``,
``blur`` (``gaussian_blur``), ``crop`` (``random_crop``), ``pad``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from biomedseg.errors import UserError
from biomedseg.transforms.basic import Compose

__all__ = [
    "Brightness", "Contrast", "Flip", "FlipRot90", "Gamma", "GaussianBlur", "GaussianNoise", "Pad",
    "RandomCrop", "Rot90", "Spatial", "UniformNoise", "PRESETS", "TRANSFORMS", "build_augmentations",
    "build_preset",
]

_PAD_MODES = ("symmetric", "reflect", "constant")
# numpy.pad mode -> scipy.ndimage boundary mode with the same meaning
_NDIMAGE_MODE = {"symmetric": "reflect", "reflect": "mirror", "constant": "constant"}


def _pair(value, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a [low, high] pair, got {value!r}") from None
    if lo > hi:
        raise ValueError(f"{name}: low {lo} > high {hi}")
    return lo, hi


def _check_p(p) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return p


class _Random:
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


# -- flips and 90-degree rotations -------------------------------------------------------------

class Flip(_Random):
    """Mirror left-right and (independently) up-down, each with probability ``p``."""

    def __init__(self, p: float = 0.5, horizontal: bool = True, vertical: bool = True):
        self.p, self.horizontal, self.vertical = _check_p(p), bool(horizontal), bool(vertical)

    def __call__(self, image, mask, rng):
        if self.horizontal and rng.random() < self.p:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        if self.vertical and rng.random() < self.p:
            image, mask = image[:, ::-1, :], mask[::-1, :]
        return image, mask


def _rot_k(rng, h: int, w: int) -> int:
    """Number of quarter turns; only 0 or 2 for non-square arrays (the shape is kept)."""
    return int(rng.integers(4)) if h == w else 2 * int(rng.integers(2))


class Rot90(_Random):
    """Rotation by a random multiple of 90 degrees (only 0/180 on non-square images)."""

    def __init__(self, p: float = 1.0):
        self.p = _check_p(p)

    def apply(self, image, mask, rng):
        k = _rot_k(rng, *mask.shape)
        if k:
            image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k, axes=(0, 1))
        return image, mask


class FlipRot90(_Random):
    """One of the 8 symmetries of the square, uniformly (4 on non-square images)."""

    def __init__(self, p: float = 1.0):
        self.p = _check_p(p)

    def apply(self, image, mask, rng):
        image, mask = Rot90(1.0).apply(image, mask, rng)
        if rng.random() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        return image, mask


# -- rotation, scaling, elastic deformation in one resampling --------------------------------

def warp(image: np.ndarray, mask: np.ndarray, coords: np.ndarray, mode: str = "symmetric", cval: float = 0.0):
    """Resample image (order 1) and mask (order 0, nearest) at ``coords`` ``(2, H', W')`` (y, x)."""
    nd_mode = _NDIMAGE_MODE[mode]
    out = np.empty((image.shape[0],) + coords.shape[1:], np.float32)
    for c in range(image.shape[0]):
        ndimage.map_coordinates(np.asarray(image[c], np.float32), coords, output=out[c], order=1,
                                mode=nd_mode, cval=cval, prefilter=False)
    m = ndimage.map_coordinates(np.asarray(mask), coords, order=0, mode=nd_mode, cval=0, prefilter=False)
    return out, m.astype(np.int64, copy=False)


def _upsample_linear(field: np.ndarray, h: int, w: int, step: int) -> np.ndarray:
    """Linear interpolation of ``(C, h', w')`` to ``(C, h, w)``: output pixel i samples the
    coarse position i / step (elementwise, no BLAS: fast and thread-free)."""

    def along(a: np.ndarray, n: int, axis: int) -> np.ndarray:
        pos = np.arange(n) / step
        i0 = np.minimum(pos.astype(int), a.shape[axis] - 2)
        frac = (pos - i0).astype(a.dtype)
        shape = [1] * a.ndim
        shape[axis] = n
        frac = frac.reshape(shape)
        return np.take(a, i0, axis=axis) * (1 - frac) + np.take(a, i0 + 1, axis=axis) * frac

    return along(along(field, h, 1), w, 2)


class Spatial:
    """Random rotation, isotropic scaling and elastic deformation, combined in one resampling.

    Args:
        rotate_p, degrees: probability and range (uniform in ``[-degrees, degrees]``).
        scale_p, scale: probability and zoom range ``[low, high]`` (log-uniform; > 1 enlarges).
        elastic_p, sigma, magnitude: probability; smoothness (pixels) of the random displacement
            field and its root-mean-square length in pixels (Simard et al. 2003, with the
            amplitude given directly in pixels).
        mode: boundary handling, a ``numpy.pad`` mode: ``symmetric`` | ``reflect`` | ``constant``.
    """

    def __init__(self, rotate_p: float = 0.0, degrees: float = 15.0, scale_p: float = 0.0,
                 scale: Sequence[float] = (0.85, 1.15), elastic_p: float = 0.0, sigma: float = 20.0,
                 magnitude: float = 4.0, mode: str = "symmetric"):
        self.rotate_p, self.degrees = _check_p(rotate_p), float(degrees)
        self.scale_p, self.scale = _check_p(scale_p), _pair(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError("scale must be positive")
        self.elastic_p, self.sigma, self.magnitude = _check_p(elastic_p), float(sigma), float(magnitude)
        if mode not in _PAD_MODES:
            raise ValueError(f"mode must be one of {', '.join(_PAD_MODES)}")
        self.mode = mode

    def parts(self) -> set[str]:
        return {n for n, p in (("rotate", self.rotate_p), ("scale", self.scale_p), ("elastic", self.elastic_p)) if p}

    def merged(self, other: "Spatial") -> "Spatial | None":
        """One transform doing both, or None when they overlap (same component / other mode)."""
        if self.parts() & other.parts() or self.mode != other.mode:
            return None
        kw = dict(vars(self))
        for part, keys in (("rotate", ("rotate_p", "degrees")), ("scale", ("scale_p", "scale")),
                           ("elastic", ("elastic_p", "sigma", "magnitude"))):
            if part in other.parts():
                kw.update({k: getattr(other, k) for k in keys})
        return Spatial(**kw)

    def displacement(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Smooth random field ``(2, H, W)`` with RMS length ``magnitude`` pixels.

        White noise on a grid ``step = sigma // 8`` times coarser is smoothed with a Gaussian of
        ``sigma / step`` and interpolated linearly to full resolution: about the field that
        smoothing full-resolution noise would give, at a fraction of the cost.
        """
        h, w = shape
        step = max(1, int(self.sigma // 8))
        ch, cw = h // step + 2, w // step + 2
        field = ndimage.gaussian_filter(rng.standard_normal((2, ch, cw)), (0, self.sigma / step, self.sigma / step),
                                        mode="wrap")
        if step > 1:
            field = _upsample_linear(field.astype(np.float32), h, w, step)
        field = field[:, :h, :w]
        rms = float(np.sqrt(np.mean(field**2))) or 1.0
        return (field * (self.magnitude / rms)).astype(np.float32)

    def __call__(self, image, mask, rng):
        rot = self.rotate_p > 0 and rng.random() < self.rotate_p
        scl = self.scale_p > 0 and rng.random() < self.scale_p
        ela = self.elastic_p > 0 and rng.random() < self.elastic_p
        if not (rot or scl or ela):
            return image, mask
        h, w = mask.shape
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        y, x = np.meshgrid(np.arange(h, dtype=np.float32) - cy, np.arange(w, dtype=np.float32) - cx, indexing="ij")
        angle = math.radians(rng.uniform(-self.degrees, self.degrees)) if rot else 0.0
        s = math.exp(rng.uniform(math.log(self.scale[0]), math.log(self.scale[1]))) if scl else 1.0
        # output pixel -> source pixel: inverse rotation and inverse zoom about the centre
        c, si = math.cos(angle) / s, math.sin(angle) / s
        coords = np.stack([c * y - si * x + cy, si * y + c * x + cx])
        if ela:
            coords += self.displacement((h, w), rng)
        return warp(image, mask, coords, self.mode)

    def __repr__(self) -> str:
        return f"Spatial({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


# -- crop and pad -----------------------------------------------------------------------------

class RandomCrop(_Random):
    """Crop a random window of ``scale`` x the side (uniform in the range), then either resize it
    back to the input size (``resize=True``; a zoom-in) or pad it back with ``mode``."""

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.6, 1.0), resize: bool = True,
                 mode: str = "symmetric"):
        self.p, self.scale, self.resize = _check_p(p), _pair(scale, "scale"), bool(resize)
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError("crop scale must lie in (0, 1]")
        if mode not in _PAD_MODES:
            raise ValueError(f"mode must be one of {', '.join(_PAD_MODES)}")
        self.mode = mode

    def apply(self, image, mask, rng):
        h, w = mask.shape
        f = rng.uniform(*self.scale)
        ch, cw = max(1, round(h * f)), max(1, round(w * f))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        if self.resize:
            ys = y0 + (np.arange(h, dtype=np.float32) + 0.5) * (ch / h) - 0.5
            xs = x0 + (np.arange(w, dtype=np.float32) + 0.5) * (cw / w) - 0.5
            coords = np.stack(np.meshgrid(ys, xs, indexing="ij"))
            return warp(image, mask, coords, "symmetric")
        image, mask = image[:, y0:y0 + ch, x0:x0 + cw], mask[y0:y0 + ch, x0:x0 + cw]
        top, left = (h - ch) // 2, (w - cw) // 2
        return _pad(image, mask, ((top, h - ch - top), (left, w - cw - left)), self.mode, 0.0)


def _pad(image, mask, widths, mode: str, value: float):
    """Pad ``(C, H, W)`` image and ``(H, W)`` mask by ``widths`` ``((top, bottom), (left, right))``."""
    for axis, (a, b) in enumerate(widths):
        if not (a or b):
            continue
        m = mode
        if m == "reflect" and mask.shape[axis] < 2:
            m = "symmetric"  # nothing to reflect about
        width = [(0, 0), (0, 0)]
        width[axis] = (a, b)
        image = np.pad(image, [(0, 0)] + width, mode=m, **({"constant_values": value} if m == "constant" else {}))
        mask = np.pad(mask, width, mode=m, **({"constant_values": 0} if m == "constant" else {}))
    return image, mask


class Pad(_Random):
    """Pad all sides by ``pad`` pixels, or (``size`` given) up to at least ``size`` x ``size``,
    centred. ``mode``: ``symmetric`` (mirror with the edge pixel), ``reflect`` (mirror without
    it) or ``constant`` (image ``value``, mask class 0)."""

    def __init__(self, pad: int = 16, mode: str = "symmetric", value: float = 0.0, size: int | None = None,
                 p: float = 1.0):
        if mode not in _PAD_MODES:
            raise ValueError(f"mode must be one of {', '.join(_PAD_MODES)}")
        self.pad, self.mode, self.value, self.size, self.p = int(pad), mode, float(value), size, _check_p(p)

    def apply(self, image, mask, rng):
        h, w = mask.shape
        if self.size is not None:
            dh, dw = max(0, int(self.size) - h), max(0, int(self.size) - w)
            widths = ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2))
        else:
            widths = ((self.pad, self.pad), (self.pad, self.pad))
        return _pad(image, mask, widths, self.mode, self.value)


# -- intensity (the mask is never changed) ----------------------------------------------------

class GaussianNoise(_Random):
    """Add N(0, sigma^2) per pixel, sigma uniform in ``std`` (z-score units)."""

    def __init__(self, p: float = 0.2, std: Sequence[float] = (0.0, 0.1)):
        self.p, self.std = _check_p(p), _pair(std, "std")

    def apply(self, image, mask, rng):
        sigma = rng.uniform(*self.std)
        return (image + rng.normal(0.0, sigma, image.shape).astype(np.float32)).astype(np.float32), mask


class UniformNoise(_Random):
    """Add U(-amplitude, amplitude) per pixel."""

    def __init__(self, p: float = 0.2, amplitude: float = 0.1):
        self.p, self.amplitude = _check_p(p), float(amplitude)

    def apply(self, image, mask, rng):
        noise = rng.uniform(-self.amplitude, self.amplitude, image.shape).astype(np.float32)
        return (image + noise).astype(np.float32), mask


class Brightness(_Random):
    """Add one offset, uniform in ``[-delta, delta]`` (z-score units), to every pixel."""

    def __init__(self, p: float = 0.3, delta: float = 0.2):
        self.p, self.delta = _check_p(p), float(delta)

    def apply(self, image, mask, rng):
        return (image + np.float32(rng.uniform(-self.delta, self.delta))).astype(np.float32), mask


class Contrast(_Random):
    """Scale each channel about its mean by a factor uniform in ``factor``."""

    def __init__(self, p: float = 0.3, factor: Sequence[float] = (0.8, 1.25)):
        self.p, self.factor = _check_p(p), _pair(factor, "factor")

    def apply(self, image, mask, rng):
        f = np.float32(rng.uniform(*self.factor))
        mean = image.mean(axis=(1, 2), keepdims=True)
        return ((image - mean) * f + mean).astype(np.float32), mask


class Gamma(_Random):
    """``x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` per channel (lo/hi: the channel's
    min/max), ``g`` log-uniform in ``gamma``; the value range is kept."""

    def __init__(self, p: float = 0.3, gamma: Sequence[float] = (0.75, 1.35)):
        self.p, self.gamma = _check_p(p), _pair(gamma, "gamma")
        if self.gamma[0] <= 0:
            raise ValueError("gamma must be positive")

    def apply(self, image, mask, rng):
        g = math.exp(rng.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))
        lo = image.min(axis=(1, 2), keepdims=True)
        span = np.maximum(image.max(axis=(1, 2), keepdims=True) - lo, 1e-6)
        return (lo + span * np.power((image - lo) / span, g)).astype(np.float32), mask


class GaussianBlur(_Random):
    """Gaussian smoothing of every channel, sigma (pixels) uniform in ``sigma``."""

    def __init__(self, p: float = 0.15, sigma: Sequence[float] = (0.5, 1.0)):
        self.p, self.sigma = _check_p(p), _pair(sigma, "sigma")

    def apply(self, image, mask, rng):
        s = rng.uniform(*self.sigma)
        return ndimage.gaussian_filter(np.asarray(image, np.float32), (0, s, s), mode="reflect"), mask


# -- registry, presets, config lists ---------------------------------------------------------

def _rotate(p: float = 0.5, degrees: float = 15.0, mode: str = "symmetric") -> Spatial:
    return Spatial(rotate_p=p, degrees=degrees, mode=mode)


def _scale(p: float = 0.5, scale: Sequence[float] = (0.85, 1.15), mode: str = "symmetric") -> Spatial:
    return Spatial(scale_p=p, scale=scale, mode=mode)


def _elastic(p: float = 0.3, sigma: float = 20.0, magnitude: float = 4.0, mode: str = "symmetric") -> Spatial:
    return Spatial(elastic_p=p, sigma=sigma, magnitude=magnitude, mode=mode)


#: name -> factory(**params) for :func:`build_augmentations`.
TRANSFORMS: dict[str, Any] = {
    "flip": Flip, "rot90": Rot90, "flip_rot90": FlipRot90, "flips": FlipRot90,
    "rotate": _rotate, "scale": _scale, "elastic": _elastic, "spatial": Spatial,
    "gaussian_noise": GaussianNoise, "noise": GaussianNoise, "uniform_noise": UniformNoise,
    "brightness": Brightness, "contrast": Contrast, "gamma": Gamma,
    "blur": GaussianBlur, "gaussian_blur": GaussianBlur,
    "crop": RandomCrop, "random_crop": RandomCrop, "pad": Pad,
}


def build_augmentations(spec: list[dict]) -> Compose:
    """Pipeline from a config list ``[{name: rotate, p: 0.5, degrees: 30}, ...]`` (in order).

    Consecutive rotate/scale/elastic entries become one :class:`Spatial` resampling. Unknown
    names or parameters raise :class:`UserError`.
    """
    if not isinstance(spec, (list, tuple)):
        raise UserError(f"augment: expected a list of {{name: ..., p: ...}} entries, got {spec!r}")
    transforms: list = []
    for i, entry in enumerate(spec):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise UserError(f"augment entry {i + 1}: expected a mapping with a 'name', got {entry!r}")
        params = dict(entry)
        name = str(params.pop("name")).lower()
        if name not in TRANSFORMS:
            raise UserError(f"augment entry {i + 1}: unknown transform {name!r}; choose from "
                            f"{', '.join(sorted(TRANSFORMS))}")
        try:
            t = TRANSFORMS[name](**params)
        except (TypeError, ValueError) as exc:
            raise UserError(f"augment entry {i + 1} ({name}): {exc}") from None
        if isinstance(t, Spatial) and transforms and isinstance(transforms[-1], Spatial):
            merged = transforms[-1].merged(t)
            if merged is not None:
                transforms[-1] = merged
                continue
        transforms.append(t)
    return Compose(transforms)


def _default() -> Compose:
    return Compose([
        FlipRot90(),
        Spatial(rotate_p=0.25, degrees=15, scale_p=0.25, scale=(0.85, 1.15)),
        Brightness(p=0.3, delta=0.2),
        Contrast(p=0.3, factor=(0.8, 1.25)),
        Gamma(p=0.3, gamma=(0.75, 1.35)),
        GaussianNoise(p=0.2, std=(0.0, 0.1)),
        GaussianBlur(p=0.15, sigma=(0.5, 1.0)),
    ])


def _strong() -> Compose:
    return Compose([
        FlipRot90(),
        Spatial(rotate_p=0.5, degrees=45, scale_p=0.5, scale=(0.7, 1.4), elastic_p=0.3, sigma=20, magnitude=5),
        Brightness(p=0.5, delta=0.3),
        Contrast(p=0.5, factor=(0.65, 1.5)),
        Gamma(p=0.5, gamma=(0.6, 1.6)),
        GaussianNoise(p=0.3, std=(0.0, 0.15)),
        GaussianBlur(p=0.25, sigma=(0.5, 1.5)),
    ])


#: preset name -> pipeline factory.
PRESETS = {
    "none": lambda: Compose([]),
    "flips": lambda: Compose([FlipRot90()]),
    "default": _default,
    "strong": _strong,
}


def build_preset(name: str) -> Compose | None:
    """Pipeline of preset ``name``, or None when there is no such preset."""
    factory = PRESETS.get(str(name).lower())
    return factory() if factory is not None else None
