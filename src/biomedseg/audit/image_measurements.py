"""Per-image measurements of the data audit and their pooling into intensity statistics.

Everything here works on one image at a time and returns a small :class:`ImageRecord`, so
the audit keeps only a ``THUMB`` x ``THUMB`` thumbnail per image in memory (for the duplicate
search) and never a whole data set.

- :func:`measure_image`: shape, channels, dtype, grey-stored-as-RGB, exact-content digest,
  per-channel sums, intensity histogram/sample and the duplicate-search thumbnail.
- :func:`thumbnail`: the contrast-stretched grey ``uint8`` thumbnail of one image.
- :class:`IntensityAccumulator`: per-channel mean/std/percentiles pooled over the records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from biomedseg.io.images import read_image

#: Side of the grey thumbnail kept per image for the near-duplicate search.
THUMB = 128
#: Pixels sampled per image and channel for percentiles of non-8-bit images.
SAMPLE_PER_IMAGE = 2048
#: Intensity percentiles reported per channel.
INTENSITY_PERCENTILES = (0.5, 50.0, 99.5)


@dataclass
class ImageRecord:
    """Measurements of one image (the thumbnail is returned separately)."""

    shape: tuple[int, int]
    channels: int  # as read: 1 or 3
    dtype: str
    grey_rgb: bool
    colour: bool  # real colour (3 channels that differ)
    digest: str
    constant: bool
    sums: np.ndarray  # (3,) float64, grey images replicated
    sumsq: np.ndarray  # (3,)
    grey_sum: float
    grey_sumsq: float
    n_pixels: int
    vmin: float
    vmax: float
    hist: np.ndarray | None  # (4, bins) int64: R, G, B (grey replicated), grey; integer images
    sample: np.ndarray  # (n, 4) float32 sample: R, G, B, grey


def _grey(img: np.ndarray, grey_rgb: bool) -> np.ndarray:
    if img.shape[2] == 1 or grey_rgb:
        return img[:, :, 0]
    luma = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if np.issubdtype(img.dtype, np.integer):
        return np.rint(luma).astype(img.dtype)
    return luma


def thumbnail(grey: np.ndarray, size: int = THUMB) -> tuple[np.ndarray, bool]:
    """``(size x size uint8 contrast-stretched grey thumbnail, constant?)`` (box filter)."""
    if grey.dtype == np.uint8:
        small = np.asarray(Image.fromarray(grey).resize((size, size), Image.BOX), np.float32)
    else:
        g = np.ascontiguousarray(np.nan_to_num(grey.astype(np.float32, copy=False)))
        small = np.asarray(Image.fromarray(g).resize((size, size), Image.BOX), np.float32)
    lo, hi = np.percentile(small, [0.5, 99.5])
    smin, smax = float(small.min()), float(small.max())
    if not np.isfinite(hi - lo) or hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
        lo, hi = smin, smax
    # (nearly) one value everywhere: nothing to compare for near duplicates
    constant = smax - smin <= 1e-3 * max(1.0, abs(smax)) or hi <= lo
    if constant:
        return np.zeros((size, size), np.uint8), True
    scaled = np.clip((small - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.rint(scaled).astype(np.uint8), False


def _channel_stats(ch: np.ndarray) -> tuple[float, float, np.ndarray | None]:
    """``(sum, sum of squares, histogram or None)`` of one channel; integer channels are
    counted with one ``bincount`` and the sums taken from the histogram (exact)."""
    if ch.dtype in (np.uint8, np.uint16):
        bins = 256 if ch.dtype == np.uint8 else 65536
        hist = np.bincount(ch.ravel(), minlength=bins)[:bins].astype(np.int64)
        v = np.arange(bins, dtype=np.float64)
        hf = hist.astype(np.float64)
        return float(hf @ v), float(hf @ (v * v)), hist
    f = np.nan_to_num(ch.astype(np.float64)).ravel()
    return float(f.sum()), float(f @ f), None


def measure_image(path, rng: np.random.Generator) -> tuple[ImageRecord, np.ndarray]:
    """Read an image (``UserError`` if unreadable) and measure it.

    Returns ``(record, thumbnail (THUMB, THUMB) uint8)``.
    """
    img = read_image(path)
    h, w, c = img.shape
    grey_rgb = c == 3 and bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))
    grey = _grey(img, grey_rgb)
    digest = hashlib.blake2b(img.tobytes(), digest_size=16)
    digest.update(f"{img.shape}{img.dtype}".encode())
    n = h * w
    if c == 3 and not grey_rgb:
        stats = [_channel_stats(img[:, :, i]) for i in range(3)] + [_channel_stats(grey)]
    else:
        one = _channel_stats(img[:, :, 0])
        stats = [one, one, one, one]
    sums = np.array([st[0] for st in stats[:3]])
    sumsq = np.array([st[1] for st in stats[:3]])
    hist = None
    if all(st[2] is not None for st in stats):
        hist = np.stack([st[2] for st in stats])
    # a regular sample of pixels: percentiles of data sets that are not all 8/16-bit integers
    m = SAMPLE_PER_IMAGE if hist is None else SAMPLE_PER_IMAGE // 4
    step = max(1, n // m)
    start = int(rng.integers(0, step)) if step > 1 else 0
    flat = img.reshape(n, c)[start::step][:m].astype(np.float32)
    sample = np.empty((len(flat), 4), np.float32)
    sample[:, :3] = flat if c == 3 else flat[:, :1]
    sample[:, 3] = grey.reshape(-1)[start::step][:m]
    thumb, constant = thumbnail(grey)
    if hist is not None:
        nz = np.flatnonzero(hist[:3].sum(axis=0))
        vmin, vmax = (float(nz[0]), float(nz[-1])) if nz.size else (0.0, 0.0)
    else:
        finite = np.isfinite(img)
        vals = img[finite] if not finite.all() else img
        vmin, vmax = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
    rec = ImageRecord(
        (h, w),
        c,
        str(img.dtype),
        grey_rgb,
        c == 3 and not grey_rgb,
        digest.hexdigest(),
        constant,
        sums,
        sumsq,
        stats[3][0],
        stats[3][1],
        n,
        vmin,
        vmax,
        hist,
        sample,
    )
    return rec, thumb


class IntensityAccumulator:
    """Pools :class:`ImageRecord` statistics into mean/std/percentiles per channel."""

    def __init__(self) -> None:
        self.sums = np.zeros(4)
        self.sumsq = np.zeros(4)
        self.n = 0
        self.hist: np.ndarray | None = None
        self.integer_only = True
        self.samples: list[np.ndarray] = []
        self.vmin = np.inf
        self.vmax = -np.inf
        self.dtypes: dict[str, int] = {}

    def add(self, rec: ImageRecord) -> None:
        self.sums[:3] += rec.sums
        self.sumsq[:3] += rec.sumsq
        self.sums[3] += rec.grey_sum
        self.sumsq[3] += rec.grey_sumsq
        self.n += rec.n_pixels
        self.vmin = min(self.vmin, rec.vmin)
        self.vmax = max(self.vmax, rec.vmax)
        self.dtypes[rec.dtype] = self.dtypes.get(rec.dtype, 0) + 1
        if rec.hist is None:
            self.integer_only = False
        else:
            if self.hist is None or self.hist.shape[1] < rec.hist.shape[1]:
                grown = np.zeros((4, rec.hist.shape[1]), np.int64)
                if self.hist is not None:
                    grown[:, : self.hist.shape[1]] += self.hist
                self.hist = grown
            self.hist[:, : rec.hist.shape[1]] += rec.hist
        if rec.sample is not None and len(rec.sample):
            self.samples.append(rec.sample)

    def summary(self, colour: bool) -> dict:
        """Statistics in the channel layout training uses (3 if any image is colour, else 1)."""
        if self.n == 0:
            return {}
        idx = [0, 1, 2] if colour else [3]
        mean = self.sums[idx] / self.n
        std = np.sqrt(np.maximum(self.sumsq[idx] / self.n - mean**2, 0.0))
        pct = {}
        if self.integer_only and self.hist is not None:
            for p in INTENSITY_PERCENTILES:
                pct[_pkey(p)] = [_hist_percentile(self.hist[i], p) for i in idx]
        else:
            sample = np.concatenate(self.samples, axis=0)
            for p in INTENSITY_PERCENTILES:
                pct[_pkey(p)] = [float(np.percentile(sample[:, i], p)) for i in idx]
        out = {
            "channels": len(idx),
            "channel_names": ["R", "G", "B"] if colour else ["grey"],
            "mean": [float(v) for v in mean],
            "std": [float(max(v, 1e-6)) for v in std],
            "percentiles": pct,
            "min": float(self.vmin),
            "max": float(self.vmax),
            "dtypes": dict(self.dtypes),
            "percentiles_exact": bool(self.integer_only),
        }
        if "uint16" in self.dtypes:
            top = int(self.vmax) if np.isfinite(self.vmax) else 0
            out["uint16_range"] = [int(self.vmin), top]
            out["effective_bits"] = max(1, int(np.ceil(np.log2(top + 1)))) if top > 0 else 1
        return out

    def histogram(self, colour: bool, bins: int = 64) -> tuple[np.ndarray, np.ndarray] | None:
        """``(edges, counts (C, bins))`` for plotting."""
        idx = [0, 1, 2] if colour else [3]
        if self.integer_only and self.hist is not None:
            top = int(self.vmax) + 1 if np.isfinite(self.vmax) else self.hist.shape[1]
            top = max(top, 2)
            edges = np.linspace(0, top, bins + 1)
            which = np.clip(np.searchsorted(edges, np.arange(top), side="right") - 1, 0, bins - 1)
            counts = np.stack([np.bincount(which, weights=self.hist[i, :top], minlength=bins) for i in idx])
            return edges, counts
        if not self.samples:
            return None
        sample = np.concatenate(self.samples, axis=0)
        lo, hi = float(np.min(sample[:, idx])), float(np.max(sample[:, idx]))
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
        counts = np.stack([np.histogram(sample[:, i], edges)[0] for i in idx])
        return edges, counts


def _pkey(p: float) -> str:
    return f"{p:g}"


def _hist_percentile(hist: np.ndarray, p: float) -> float:
    """Percentile (lower value) of the values counted in ``hist``."""
    cum = np.cumsum(hist)
    if cum[-1] == 0:
        return 0.0
    target = p / 100.0 * (cum[-1] - 1)
    return float(np.searchsorted(cum, target, side="right"))
