"""Per-mask measurements of the data audit: encodings, palette checks and class statistics.

Everything here works on one mask at a time and returns small records. The stored values of a
mask (:class:`~biomedseg.data.mask_values.ValueTable`) and their conversion to classes
(:class:`~biomedseg.data.mask_values.MaskConverter`) live in :mod:`biomedseg.data.mask_values`.

- :func:`mask_levels`: the *levels* of a mask (frequent values; rare values next to a level are
  damage), used by :func:`classify_encoding` (``index``, ``binary_0_255``, ``grey_levels``,
  ``rgb``, ``empty``) and :func:`off_palette` (damaged / unknown values).
- :func:`measure_mask`: class pixel counts, off-palette (snapped) pixels and connected objects
  per class (8-connectivity) of an index mask (:class:`MaskRecord`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from biomedseg.data.mask_values import ValueTable
from biomedseg.io.masks import DAMAGE_FRACTION, GREY_TOLERANCE, RGB_TOLERANCE, Palette

#: A level whose share of a mask is at least this is never merged into a neighbour.
SUBSTANTIAL = 0.02
_EIGHT = np.ones((3, 3), dtype=bool)


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


def off_palette(table: ValueTable, palette: Palette, strict_k: int | None = None, lossy: bool = False) -> dict:
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
    return {
        "pixels": int(sum(c for _, c in off)),
        "values": [[list(v) if len(v) > 1 else v[0], int(c)] for v, c in off[:5]],
        "unknown": [list(v) if len(v) > 1 else v[0] for v in unknown],
    }


@dataclass
class MaskRecord:
    """Measurements of one index mask."""

    shape: tuple[int, int]
    class_counts: np.ndarray  # (K,) int64
    n_snapped: int
    areas: dict[int, np.ndarray] = field(default_factory=dict)  # class -> object areas
    unlabelled: int = 0  # pixels holding the unlabelled value (partial labels)

    @property
    def present(self) -> np.ndarray:
        return self.class_counts > 0


def measure_mask(
    index_mask: np.ndarray, n_classes: int, n_snapped: int, object_classes: list[int], counts: np.ndarray | None = None
) -> MaskRecord:
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
            fg = fg[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # label the bounding box only
            labels, n = ndimage.label(fg, structure=_EIGHT)
            areas[c] = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
        else:
            areas[c] = np.zeros(0, dtype=np.int64)
    return MaskRecord(index_mask.shape[:2], counts, int(n_snapped), areas)
