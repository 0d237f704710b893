"""In-memory training data: decoded images cached once, random patches with oversampling.

Images are decoded once and kept as ``uint8``/``uint16`` ``(H, W, C)`` arrays (no re-decoding
per epoch); masks as ``(H, W) uint8`` class indices. :class:`PatchSampler` draws training
batches ``x (B, C, P, P) float32`` and ``y (B, P, P) int64``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.core.labels import IGNORE_INDEX
from biomedseg.io import conform_channels, read_image, read_mask
from biomedseg.transforms.normalize import Normalizer

MAX_COORDS_PER_CLASS = 4096


@dataclass
class CachedSample:
    """One decoded training pair. ``image (H, W, C)`` uint8/uint16, ``mask (H, W)`` uint8."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    class_coords: dict[int, np.ndarray] = field(default_factory=dict)  # class -> (n, 2) int32 (y, x)
    pixel_size: tuple[float, float] | None = None  # (y, x) µm, when dataset.json or the file states it

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def partial(self) -> bool:
        """Whether some pixels are unlabelled (random windows then hold labelled ones)."""
        return bool(self.class_coords) and bool((self.mask == IGNORE_INDEX).any())


def index_class_pixels(mask: np.ndarray, n_classes: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """For each class present in ``mask``, up to ``MAX_COORDS_PER_CLASS`` random pixel coordinates."""
    coords = {}
    flat = mask.ravel()
    counts = np.bincount(flat, minlength=n_classes)
    order = np.argsort(flat, kind="stable")
    start = 0
    for c in range(n_classes):
        n = int(counts[c])
        if n:
            idx = order[start : start + n]
            if n > MAX_COORDS_PER_CLASS:
                idx = rng.choice(idx, MAX_COORDS_PER_CLASS, replace=False)
            yx = np.stack(np.unravel_index(idx, mask.shape), axis=1).astype(np.int32)
            coords[c] = yx
        start += n
    return coords


def load_sample(sample, palette, channels: int, strict_index: bool, n_classes: int, rng) -> tuple[CachedSample, int]:
    """Decode one :class:`~biomedseg.data.discovery.Sample`; returns it and its snapped-pixel count."""
    image = conform_channels(read_image(sample.image), channels)
    mask, n_snapped = read_mask(sample.mask, palette, strict_index=strict_index)
    if palette.ignore is not None and not (mask != IGNORE_INDEX).any():
        value = palette.ignore[0] if len(set(palette.ignore)) == 1 else list(palette.ignore)
        raise UserError(
            f"{sample.mask}: every pixel is unlabelled (value {value}): nothing to learn from; label "
            "some pixels or leave the image out"
        )
    return CachedSample(sample.id, image, mask, index_class_pixels(mask, n_classes, rng)), n_snapped


def class_pixel_counts(samples: list[CachedSample], n_classes: int) -> np.ndarray:
    """``(K,) int64`` pixel count of each class over ``samples``."""
    total = np.zeros(n_classes, np.int64)
    for s in samples:
        total += np.bincount(s.mask.ravel(), minlength=n_classes)[:n_classes]
    return total


def _crop_padded(arr: np.ndarray, y0: int, x0: int, size: int, mode: str) -> np.ndarray:
    """Window ``[y0:y0+size, x0:x0+size]`` of ``arr`` (H, W, ...), mirror-padded where it leaves the array."""
    h, w = arr.shape[:2]
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, h), min(x0 + size, w)
    win = arr[ys:ye, xs:xe]
    pad = ((ys - y0, y0 + size - ye), (xs - x0, x0 + size - xe)) + ((0, 0),) * (arr.ndim - 2)
    if any(p for pair in pad for p in pair):
        # "symmetric" mirror padding works for any pad width only if it is < size; repeat if needed
        while any(pad[i][0] > win.shape[i] or pad[i][1] > win.shape[i] for i in range(2)):
            step = tuple(
                (min(pad[i][0], win.shape[i]), min(pad[i][1], win.shape[i])) if i < 2 else (0, 0)
                for i in range(arr.ndim)
            )
            win = np.pad(win, step, mode=mode)
            pad = tuple((pad[i][0] - step[i][0], pad[i][1] - step[i][1]) for i in range(2)) + pad[2:]
        win = np.pad(win, pad, mode=mode)
    return win


#: uniform draws of a window on a partly labelled image before one is centred near a labelled pixel
LABELLED_WINDOW_TRIES = 20


class PatchSampler:
    """Random training patches with foreground oversampling and augmentation.

    With probability ``fg_oversample`` a patch is centred (with jitter) on a random pixel of a
    foreground class chosen uniformly among the classes present, so each rare class gets a fixed
    share of patches; otherwise the image is chosen proportionally to its area and the window
    uniformly (on an image with unlabelled pixels, uniformly among the windows holding a labelled pixel:
    :meth:`_labelled_window`). Windows leaving small images are mirror-padded.
    """

    def __init__(
        self,
        samples,
        patch_size,
        n_classes,
        normalizer: Normalizer,
        augmenter,
        fg_oversample=0.33,
        background: int | None = 0,
        seed=0,
    ):
        self.samples = samples
        self.patch = int(patch_size)
        self.normalizer = normalizer
        self.augmenter = augmenter
        self.fg_oversample = float(fg_oversample)
        self.rng = np.random.default_rng(seed)
        areas = np.array([s.mask.size for s in samples], np.float64)
        self.area_p = areas / areas.sum()
        fg = [c for c in range(n_classes) if c != background]
        self.fg_classes = [c for c in fg if any(c in s.class_coords for s in samples)]
        self.holders = {c: [i for i, s in enumerate(samples) if c in s.class_coords] for c in self.fg_classes}
        self.partial = [s.partial for s in samples]

    def _window(self) -> tuple[int, int, int]:
        rng, p = self.rng, self.patch
        if self.fg_classes and rng.random() < self.fg_oversample:
            c = self.fg_classes[int(rng.integers(len(self.fg_classes)))]
            i = self.holders[c][int(rng.integers(len(self.holders[c])))]
            yx = self.samples[i].class_coords[c]
            cy, cx = yx[int(rng.integers(len(yx)))]
            jy, jx = rng.integers(-p // 4, p // 4 + 1, size=2)
            h, w = self.samples[i].shape
            y0 = int(np.clip(cy + jy - p // 2, min(0, h - p), max(0, h - p)))
            x0 = int(np.clip(cx + jx - p // 2, min(0, w - p), max(0, w - p)))
            return i, y0, x0
        i = int(rng.choice(len(self.samples), p=self.area_p))
        h, w = self.samples[i].shape
        if self.partial[i]:  # partial labels: a uniform window that holds a labelled pixel
            return (i, *self._labelled_window(i, h, w))
        return (i, *self._uniform_window(h, w))

    def _uniform_window(self, h: int, w: int) -> tuple[int, int]:
        rng, p = self.rng, self.patch
        y0 = int(rng.integers(0, h - p + 1)) if h >= p else -int(rng.integers(0, p - h + 1))
        x0 = int(rng.integers(0, w - p + 1)) if w >= p else -int(rng.integers(0, p - w + 1))
        return y0, x0

    def _labelled_window(self, i: int, h: int, w: int) -> tuple[int, int]:
        """A window of partly labelled image ``i`` drawn as on a fully labelled one (uniformly), redrawn
        until it holds a labelled pixel (``LABELLED_WINDOW_TRIES`` draws); then one around a random labelled
        pixel. Choosing the class first (the earlier rule) centred half these windows on the objects' strokes,
        so the background far from objects, most of the image, was seldom seen."""
        rng, p, mask = self.rng, self.patch, self.samples[i].mask
        for _ in range(LABELLED_WINDOW_TRIES):
            y0, x0 = self._uniform_window(h, w)
            if (mask[max(y0, 0) : y0 + p, max(x0, 0) : x0 + p] != IGNORE_INDEX).any():
                return y0, x0
        coords = self.samples[i].class_coords
        sizes = np.array([len(coords[c]) for c in coords], np.float64)
        c = list(coords)[int(rng.choice(len(sizes), p=sizes / sizes.sum()))]  # a random labelled pixel
        cy, cx = coords[c][int(rng.integers(len(coords[c])))]
        y0 = int(np.clip(cy + rng.integers(-p // 2, p // 2 + 1) - p // 2, min(0, h - p), max(0, h - p)))
        x0 = int(np.clip(cx + rng.integers(-p // 2, p // 2 + 1) - p // 2, min(0, w - p), max(0, w - p)))
        return y0, x0

    def patch_pair(self) -> tuple[np.ndarray, np.ndarray]:
        """One augmented pair: ``(C, P, P) float32`` image, ``(P, P) int64`` mask."""
        i, y0, x0 = self._window()
        s = self.samples[i]
        img = _crop_padded(s.image, y0, x0, self.patch, "symmetric")
        msk = _crop_padded(s.mask, y0, x0, self.patch, "symmetric")
        x = self.normalizer(img)
        return self.augmenter(x, msk.astype(np.int64), self.rng)

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``x (B, C, P, P) float32``, ``y (B, P, P) int64``."""
        pairs = [self.patch_pair() for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
