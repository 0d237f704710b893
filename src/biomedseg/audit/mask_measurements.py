"""Per-mask measurements of the data audit: stored values, encodings and class statistics.

Everything here works on one mask at a time and returns small records.

- :func:`mask_value_table` / :func:`value_table`: the distinct values stored in a mask
  (:class:`ValueTable`); :func:`mask_levels`: its *levels* (frequent values; rare values next
  to a level are damage), used by :func:`classify_encoding` (``index``, ``binary_0_255``,
  ``grey_levels``, ``rgb``, ``empty``) and :func:`off_palette` (damaged / unknown values).
- :class:`MaskConverter`: stored values -> class indices for one palette, as ``read_mask``.
- :func:`measure_mask`: class pixel counts, off-palette (snapped) pixels and connected objects
  per class (8-connectivity) of an index mask (:class:`MaskRecord`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from biomedseg.errors import UserError
from biomedseg.io.images import read_raw
from biomedseg.io.masks import DAMAGE_FRACTION, GREY_TOLERANCE, RGB_TOLERANCE, Palette

#: A level whose share of a mask is at least this is never merged into a neighbour.
SUBSTANTIAL = 0.02
_EIGHT = np.ones((3, 3), dtype=bool)


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
        """``(class index per stored value 0..top (uint8), value is exactly on the palette (bool))``."""
        if top not in self._luts:
            values = np.arange(top + 1, dtype=np.float64)[:, None]
            if self.palette.channels == 3:
                values = np.repeat(values, 3, axis=1)
            d = ((values[:, None, :] - self._pal[None, :, :]) ** 2).sum(axis=2)
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

