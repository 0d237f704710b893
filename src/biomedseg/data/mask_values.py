"""Stored mask values and their conversion to class indices, one mask at a time.

- :func:`mask_value_table` / :func:`value_table`: the distinct values stored in a mask
  (:class:`ValueTable`); :func:`grey_or_colour`: grey stored as RGB collapsed, floats rounded.
- :class:`MaskConverter`: stored values -> class indices for one palette, as ``read_mask``
  (used by tiling and by the data audit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.core.labels import IGNORE_INDEX
from biomedseg.io.images import read_raw
from biomedseg.io.masks import Palette


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


def labelled_table(table: ValueTable, ignore: tuple[int, ...] | None) -> ValueTable:
    """``table`` without the unlabelled value ``ignore`` (its encoding is judged on the labels alone)."""
    if ignore is None:
        return table
    keep = [i for i, v in enumerate(table.values) if v != tuple(np.resize(ignore, len(v)))]
    if len(keep) == len(table.values):
        return table
    return ValueTable(table.shape, table.colour, [table.values[i] for i in keep], [table.counts[i] for i in keep])


def mask_value_table(path) -> ValueTable:
    """Read a mask file (``UserError`` if unreadable) and return its :class:`ValueTable`."""
    return value_table(read_raw(path))


class MaskConverter:
    """Stored mask values -> class indices for one palette, as ``read_mask`` does it: every
    value goes to the nearest palette entry (Euclidean; grey values are widened to grey colours
    for colour palettes) and values off the palette are counted. Grey 8/16-bit masks use a
    cached lookup table, so converting a mask costs one indexing pass."""

    def __init__(self, palette: Palette) -> None:
        self.palette = palette
        self._pal = np.array(palette.values, dtype=np.float64)
        self._luts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ignore = None if palette.ignore is None else np.array(palette.ignore, np.float64)

    def _unlabelled(self, rows: np.ndarray) -> np.ndarray:
        """Rows (stored values, widened to the palette's channels) that are the unlabelled value."""
        if self._ignore is None:
            return np.zeros(len(rows), bool)
        return np.all(rows == self._ignore[None, :], axis=1)

    def _lut(self, top: int) -> tuple[np.ndarray, np.ndarray]:
        """``(class index per stored value 0..top (uint8), value is exactly on the palette (bool))``."""
        if top not in self._luts:
            values = np.arange(top + 1, dtype=np.float64)[:, None]
            if self.palette.channels == 3:
                values = np.repeat(values, 3, axis=1)
            d = ((values[:, None, :] - self._pal[None, :, :]) ** 2).sum(axis=2)
            lut, exact = d.argmin(axis=1).astype(np.uint8), d.min(axis=1) == 0
            unlabelled = self._unlabelled(values)
            lut[unlabelled], exact[unlabelled] = IGNORE_INDEX, True
            self._luts[top] = (lut, exact)
        return self._luts[top]

    def unlabelled_pixels(self, table: ValueTable) -> int:
        """Pixels of ``table`` holding the unlabelled value (0 without one)."""
        vals = np.array(
            [v * 3 if self.palette.channels == 3 and len(v) == 1 else v for v in table.values], dtype=np.float64
        ).reshape(len(table.values), -1)
        if vals.shape[1] != self._pal.shape[1]:
            return 0
        return int(np.asarray(table.counts, np.int64)[self._unlabelled(vals)].sum())

    def class_counts(self, table: ValueTable) -> tuple[np.ndarray, int]:
        """``(pixels per class (K,), n_snapped)`` straight from a :class:`ValueTable`."""
        k = self.palette.n_classes
        vals = np.array(
            [v * 3 if self.palette.channels == 3 and len(v) == 1 else v for v in table.values], dtype=np.float64
        ).reshape(len(table.values), -1)
        counts = np.asarray(table.counts, dtype=np.int64)
        if vals.shape[1] != self._pal.shape[1]:
            raise UserError(f"mask is a colour (RGB) image but the classes are {self.palette.describe()}")
        d = ((vals[:, None, :] - self._pal[None, :, :]) ** 2).sum(axis=2)
        labelled = ~self._unlabelled(vals)
        per_class = np.bincount(d.argmin(axis=1)[labelled], weights=counts[labelled], minlength=k).astype(np.int64)
        return per_class[:k], int(counts[(d.min(axis=1) > 0) & labelled].sum())

    def convert(self, values: np.ndarray, where: str = "mask") -> tuple[np.ndarray, int]:
        """``(H, W)`` / ``(H, W, 3)`` stored values -> ``(index mask uint8, n_snapped)``.

        Raises ``UserError`` for a colour mask with a grey palette."""
        values = grey_or_colour(np.asarray(values))
        if values.ndim == 3 and self.palette.channels == 1:
            raise UserError(f"{where}: mask is a colour (RGB) image but the classes are {self.palette.describe()}")
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
        unlabelled = self._unlabelled(uniq)
        index[unlabelled] = IGNORE_INDEX
        n_snapped = int(counts[(d.min(axis=1) > 0) & ~unlabelled].sum())
        return index[inverse.reshape(-1)].reshape(h, w), n_snapped


def classes_from_values(values: np.ndarray, palette: Palette) -> tuple[np.ndarray, int]:
    """Array version of ``read_mask``: ``(index mask, n_snapped)`` (see :class:`MaskConverter`)."""
    return MaskConverter(palette).convert(values)
