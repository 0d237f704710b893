"""Per-file measurements of the data audit and their aggregation into data-set statistics.

Everything here works on one image or one mask at a time and returns small records, so the
audit keeps only a 128x128 thumbnail per image in memory (for the duplicate search) and never
a whole data set.

- :func:`mask_value_table` / :func:`mask_levels`: the values stored in a mask file and its
  *levels* (frequent values; rare values next to a level are damage), used to classify its
  encoding (``index``, ``binary_0_255``, ``grey_levels``, ``rgb``, ``empty``).
- :func:`measure_image`: shape, channels, dtype, grey-stored-as-RGB, exact-content digest,
  per-channel sums, intensity histogram/sample and the duplicate-search thumbnail.
- :func:`measure_mask`: class pixel counts, off-palette (damaged) pixels and connected
  objects per class (8-connectivity) of an index mask.
- :class:`IntensityAccumulator`, :func:`object_summary`, :func:`class_weights`: data-set
  statistics from those records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from biomedseg.errors import UserError
from biomedseg.io.images import read_image, read_raw
from biomedseg.io.masks import DAMAGE_FRACTION, GREY_TOLERANCE, RGB_TOLERANCE, Palette

#: Side of the grey thumbnail kept per image for the near-duplicate search.
THUMB = 128
#: Pixels sampled per image and channel for percentiles of non-8-bit images.
SAMPLE_PER_IMAGE = 2048
#: A level whose share of a mask is at least this is never merged into a neighbour.
SUBSTANTIAL = 0.02
#: Objects with at most this many pixels are reported as possible annotation specks.
SPECK_AREA = 4
#: Percentiles of object areas reported per class.
AREA_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
#: Intensity percentiles reported per channel.
INTENSITY_PERCENTILES = (0.5, 50.0, 99.5)
_EIGHT = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------- masks
@dataclass
class ValueTable:
    """Distinct stored values of one mask: ``values`` (tuples) with ``counts``."""

    shape: tuple[int, int]
    colour: bool
    values: list[tuple[int, ...]]
    counts: list[int]

    @property
    def total(self) -> int:
        return int(self.shape[0] * self.shape[1])


def grey_or_colour(raw: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` integers; grey stored as RGB collapsed; floats rounded."""
    if raw.ndim == 3:
        raw = raw[..., :3]
        first = raw[..., 0]
        if np.array_equal(first, raw[..., 1]) and np.array_equal(first, raw[..., 2]):
            raw = first
    if np.issubdtype(raw.dtype, np.floating):
        raw = np.rint(np.nan_to_num(raw)).astype(np.int64)
    if raw.dtype.kind == "i" and raw.size and raw.min() >= 0 and raw.max() < 65536:
        raw = raw.astype(np.uint16 if raw.max() > 255 else np.uint8)
    return raw


def value_table(values: np.ndarray) -> ValueTable:
    """:class:`ValueTable` of an already decoded mask array."""
    values = grey_or_colour(np.asarray(values))
    h, w = values.shape[:2]
    if values.ndim == 2:
        if values.dtype in (np.uint8, np.uint16, np.bool_):
            counts = np.bincount(values.ravel())
            uniq = np.flatnonzero(counts)
            return ValueTable((h, w), False, [(int(v),) for v in uniq], counts[uniq].tolist())
        uniq, counts = np.unique(values.ravel(), return_counts=True)
        return ValueTable((h, w), False, [(int(v),) for v in uniq], counts.tolist())
    flat = values.reshape(-1, 3)
    if flat.dtype == np.uint8:
        keys = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
        ukeys, counts = np.unique(keys, return_counts=True)
        vals = [(int(k >> 16), int((k >> 8) & 255), int(k & 255)) for k in ukeys]
        return ValueTable((h, w), True, vals, counts.tolist())
    uniq, counts = np.unique(flat, axis=0, return_counts=True)
    return ValueTable((h, w), True, [tuple(int(x) for x in row) for row in uniq], counts.tolist())


def mask_value_table(path) -> ValueTable:
    """Read a mask file (``UserError`` if unreadable) and return its :class:`ValueTable`."""
    return value_table(read_raw(path))


def mask_levels(table: ValueTable, lossy: bool = False) -> list[tuple[int, ...]]:
    """Frequent values of one mask, most frequent first.

    Values under ``DAMAGE_FRACTION`` of the pixels are damage; a value within the grey (32) or
    colour (72) tolerance of a more frequent level is that level, damaged, unless it covers at
    least 2% of the mask. Small index values (all below 32) are never merged.
    """
    total = max(table.total, 1)
    order = sorted(range(len(table.values)), key=lambda i: (-table.counts[i], table.values[i]))
    main = [i for i in order if table.counts[i] >= DAMAGE_FRACTION * total]
    if not main:
        return []
    if not table.colour and max(table.values[i][0] for i in main) < 32:
        return [table.values[i] for i in main]
    tol = (RGB_TOLERANCE if table.colour else GREY_TOLERANCE) * (1.5 if lossy else 1.0)
    if not table.colour and max(v[0] for v in table.values) > 255:
        tol *= 257
    levels: list[tuple[int, ...]] = []
    for i in main:
        value = table.values[i]
        near = any(_dist(value, lv) <= tol for lv in levels)
        if near and table.counts[i] < SUBSTANTIAL * total:
            continue
        levels.append(value)
    return levels


def classify_encoding(levels: list[tuple[int, ...]]) -> str:
    """``empty`` | ``index`` | ``binary_0_255`` | ``grey_levels`` | ``rgb`` from mask levels."""
    if not levels or all(lv == (0,) * len(lv) for lv in levels):
        return "empty"
    if any(len(lv) == 3 for lv in levels):
        return "rgb"
    vals = {lv[0] for lv in levels}
    if vals <= {0, 255}:
        return "binary_0_255"
    if max(vals) < 32:
        return "index"
    low = [v for v in vals if v <= GREY_TOLERANCE]
    high = [v for v in vals if 255 - GREY_TOLERANCE <= v <= 255]
    if len(low) <= 1 and len(high) == 1 and len(low) + len(high) == len(vals):
        return "binary_0_255"  # 0/255 shifted by compression (e.g. a JPEG's background at 1)
    return "grey_levels"


def _dist(a, b) -> float:
    if len(a) != len(b):
        a, b = (a * 3 if len(a) == 1 else a), (b * 3 if len(b) == 1 else b)
    return float(np.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))))


def off_palette(table: ValueTable, palette: Palette, strict_k: int | None = None,
                lossy: bool = False) -> dict:
    """Values of ``table`` not in ``palette``.

    Returns ``{"pixels": n, "values": [[value, count], ...] (top 5), "unknown": [...]}`` where
    ``unknown`` lists *levels* (frequent values) far from every palette entry, i.e. a class the
    palette does not know (or, with ``strict_k``, an index >= K), as opposed to damage.
    """
    pal = {tuple(v) for v in palette.values}
    colour_pal = palette.channels == 3
    def key(v):
        return v * 3 if colour_pal and len(v) == 1 else v
    off = [(v, c) for v, c in zip(table.values, table.counts) if key(v) not in pal]
    off.sort(key=lambda t: -t[1])
    tol = (RGB_TOLERANCE if colour_pal else GREY_TOLERANCE) * (1.5 if lossy else 1.0)
    if not colour_pal and any(max(v) > 255 for v in pal):
        tol *= 257
    unknown = []
    for lv in mask_levels(table, lossy):
        k = key(lv)
        if k in pal:
            continue
        if strict_k is not None and len(k) == 1 and k[0] >= strict_k:
            unknown.append(k)
        elif min(_dist(k, p) for p in pal) > tol:
            unknown.append(k)
    return {"pixels": int(sum(c for _, c in off)),
            "values": [[list(v) if len(v) > 1 else v[0], int(c)] for v, c in off[:5]],
            "unknown": [list(v) if len(v) > 1 else v[0] for v in unknown]}


class MaskConverter:
    """Stored mask values -> class indices for one palette, as ``read_mask`` does it: every
    value goes to the nearest palette entry (Euclidean; grey values are widened to grey colours
    for colour palettes) and values off the palette are counted. Grey 8/16-bit masks use a
    cached lookup table, so converting a mask costs one indexing pass."""

    def __init__(self, palette: Palette) -> None:
        self.palette = palette
        self._pal = np.array(palette.values, dtype=np.float64)
        self._luts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _lut(self, top: int) -> tuple[np.ndarray, np.ndarray]:
        if top not in self._luts:
            values = np.arange(top + 1, dtype=np.float64)[:, None]
            pal = self._pal if self.palette.channels == 1 else self._pal
            if self.palette.channels == 3:
                values = np.repeat(values, 3, axis=1)
            d = ((values[:, None, :] - pal[None, :, :]) ** 2).sum(axis=2)
            self._luts[top] = (d.argmin(axis=1).astype(np.uint8), d.min(axis=1) == 0)
        return self._luts[top]

    def class_counts(self, table: ValueTable) -> tuple[np.ndarray, int]:
        """``(pixels per class (K,), n_snapped)`` straight from a :class:`ValueTable`."""
        k = self.palette.n_classes
        vals = np.array([v * 3 if self.palette.channels == 3 and len(v) == 1 else v
                         for v in table.values], dtype=np.float64).reshape(len(table.values), -1)
        counts = np.asarray(table.counts, dtype=np.int64)
        if vals.shape[1] != self._pal.shape[1]:
            raise UserError("mask is a colour (RGB) image but the classes are "
                            f"{self.palette.describe()}")
        d = ((vals[:, None, :] - self._pal[None, :, :]) ** 2).sum(axis=2)
        per_class = np.bincount(d.argmin(axis=1), weights=counts, minlength=k).astype(np.int64)
        return per_class[:k], int(counts[d.min(axis=1) > 0].sum())

    def convert(self, values: np.ndarray, where: str = "mask") -> tuple[np.ndarray, int]:
        """``(H, W)`` / ``(H, W, 3)`` stored values -> ``(index mask uint8, n_snapped)``.

        Raises ``UserError`` for a colour mask with a grey palette."""
        values = grey_or_colour(np.asarray(values))
        if values.ndim == 3 and self.palette.channels == 1:
            raise UserError(f"{where}: mask is a colour (RGB) image but the classes are "
                            f"{self.palette.describe()}")
        if values.ndim == 2 and values.dtype in (np.uint8, np.uint16):
            lut, exact = self._lut(255 if values.dtype == np.uint8 else 65535)
            out = np.take(lut, values)
            n_snapped = 0 if exact.all() else int(np.count_nonzero(~np.take(exact, values)))
            return out, n_snapped
        if values.ndim == 2:
            values = values[:, :, None]
            if self.palette.channels == 3:
                values = np.repeat(values, 3, axis=2)
        h, w = values.shape[:2]
        flat = values.reshape(h * w, -1)
        if flat.shape[1] == 3 and flat.dtype == np.uint8:
            keys = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
            ukeys, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
            uniq = np.stack([ukeys >> 16, (ukeys >> 8) & 255, ukeys & 255], axis=1).astype(np.float64)
        else:
            uniq, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
            uniq = uniq.astype(np.float64)
        d = ((uniq[:, None, :] - self._pal[None, :, :]) ** 2).sum(axis=2)
        index = d.argmin(axis=1).astype(np.uint8)
        n_snapped = int(counts[d.min(axis=1) > 0].sum())
        return index[inverse.reshape(-1)].reshape(h, w), n_snapped


def classes_from_values(values: np.ndarray, palette: Palette) -> tuple[np.ndarray, int]:
    """Array version of ``read_mask``: ``(index mask, n_snapped)`` (see :class:`MaskConverter`)."""
    return MaskConverter(palette).convert(values)


@dataclass
class MaskRecord:
    """Measurements of one index mask."""

    shape: tuple[int, int]
    class_counts: np.ndarray  # (K,) int64
    n_snapped: int
    areas: dict[int, np.ndarray] = field(default_factory=dict)  # class -> object areas

    @property
    def present(self) -> np.ndarray:
        return self.class_counts > 0


def measure_mask(index_mask: np.ndarray, n_classes: int, n_snapped: int,
                 object_classes: list[int], counts: np.ndarray | None = None) -> MaskRecord:
    """Class pixel counts (given or counted) and connected objects (8-connectivity) of the
    listed classes."""
    if counts is None:
        counts = np.bincount(index_mask.ravel(), minlength=n_classes)[:n_classes].astype(np.int64)
    areas = {}
    for c in object_classes:
        if c < n_classes and counts[c]:
            fg = index_mask == c
            rows = np.flatnonzero(fg.any(axis=1))
            cols = np.flatnonzero(fg.any(axis=0))
            fg = fg[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # label the bounding box only
            labels, n = ndimage.label(fg, structure=_EIGHT)
            areas[c] = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
        else:
            areas[c] = np.zeros(0, dtype=np.int64)
    return MaskRecord(index_mask.shape[:2], counts, int(n_snapped), areas)


# --------------------------------------------------------------------------------- images
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

    Returns ``(record, thumbnail)``.
    """
    img = read_image(path)
    h, w, c = img.shape
    grey_rgb = c == 3 and bool(np.array_equal(img[..., 0], img[..., 1])
                               and np.array_equal(img[..., 0], img[..., 2]))
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
    rec = ImageRecord((h, w), c, str(img.dtype), grey_rgb, c == 3 and not grey_rgb,
                      digest.hexdigest(), constant, sums, sumsq, stats[3][0], stats[3][1], n,
                      vmin, vmax, hist, sample)
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
                    grown[:, :self.hist.shape[1]] += self.hist
                self.hist = grown
            self.hist[:, :rec.hist.shape[1]] += rec.hist
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
            counts = np.stack([np.bincount(which, weights=self.hist[i, :top], minlength=bins)
                               for i in idx])
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


# ------------------------------------------------------------------------ class statistics
def object_summary(areas: np.ndarray, n_images: int) -> dict:
    """Count, percentiles, log2 histogram and recommended minimum area of object areas.

    The recommended minimum object area (for removing small predicted objects) is half the
    1st percentile of annotated object areas (at least 1 px; ``None`` with < 10 objects).
    """
    areas = np.asarray(areas, np.int64)
    out: dict = {"count": int(areas.size),
                 "per_image_mean": float(areas.size / n_images) if n_images else 0.0}
    if areas.size == 0:
        out.update(percentiles={}, histogram={"edges": [], "counts": []},
                   recommended_min_area=None, specks=0)
        return out
    pct = np.percentile(areas, AREA_PERCENTILES)
    top = int(np.ceil(np.log2(areas.max() + 1))) + 1
    edges = [0] + [2**i for i in range(top)]
    counts = np.histogram(areas, bins=np.array(edges) + 0.5)[0]
    out.update(
        percentiles={str(p): float(v) for p, v in zip(AREA_PERCENTILES, pct)},
        mean=float(areas.mean()), max=int(areas.max()), min=int(areas.min()),
        histogram={"edges": [e + 1 for e in edges[:-1]], "counts": counts.tolist()},
        recommended_min_area=(max(1, int(0.5 * pct[0])) if areas.size >= 10 else None),
        specks=int(np.count_nonzero(areas <= SPECK_AREA)),
    )
    return out


def class_weights(counts) -> dict[str, list[float]]:
    """Class weights from pooled pixel counts, as ``losses.class_weights_from_counts`` builds
    them: ``inverse`` = ``1 - f_c``; ``median`` = ``median(f) / f_c`` (absent classes 0, cap
    100); both rescaled to mean 1 over the non-zero weights."""
    counts = np.asarray(counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1.0)
    inverse = 1.0 - freq
    present = freq > 0
    med = np.median(freq[present]) if present.any() else 1.0
    median = np.minimum(np.where(present, med / np.maximum(freq, 1e-12), 0.0), 100.0)
    out = {}
    for name, w in (("inverse", inverse), ("median", median)):
        pos = w[w > 0]
        w = w / max(pos.mean() if pos.size else 1.0, 1e-12)
        out[name] = [round(float(v), 6) for v in w]
    return out
