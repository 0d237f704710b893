"""Class masks: palette discovery and conversion to class-index arrays.

A mask file may store class indices (0..K-1), binary 0/255, a few grey levels (0/128/255) or
colour-coded classes (RGB; an RGB file whose channels are all equal counts as grey). A
:class:`Palette` lists the stored value of each class; :func:`read_mask` maps every pixel to
the index of its palette entry, snapping damaged values (anti-aliasing, JPEG) to the nearest
entry and counting them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.core.labels import IGNORE_INDEX
from biomedseg.io.images import read_raw

#: A value covering less than this fraction of the pixels of every mask that contains it is
#: damage (anti-aliasing, resampling, compression), not a class.
DAMAGE_FRACTION = 0.0005
#: A value this close (8-bit units) to a more frequent one is that class, damaged (JPEG
#: spreads 0/255 masks over roughly 0..25 and 230..255) ...
GREY_TOLERANCE = 32
RGB_TOLERANCE = 72
#: ... unless it covers at least this fraction of some mask and 10% of its neighbour's pixels.
SUBSTANTIAL_FRACTION = 0.02
#: A rare colour this close to the segment between two class colours is an anti-aliased edge.
BLEND_TOLERANCE = 16
#: Tolerances are widened by this factor when masks are JPEG files.
LOSSY_FACTOR = 1.5
#: The class values themselves must cover at least this fraction of the mask pixels.
MIN_LEVEL_COVERAGE = 0.5
MAX_SAMPLE_FILES = 200
MAX_SAMPLE_PIXELS = 2**18


@dataclass
class Palette:
    """Stored value of each class: ``values[i]`` is class ``i``.

    Each entry is a 1-tuple for grey masks, e.g. ``[(0,), (255,)]``, or a 3-tuple for colour
    masks, e.g. ``[(0, 0, 0), (255, 0, 0)]``. At most 255 classes.
    """

    values: list[tuple[int, ...]]
    #: stored value of unlabelled pixels (partial labels), read as ``IGNORE_INDEX``; never a class value
    ignore: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        values = [tuple(int(v) for v in np.atleast_1d(entry)) for entry in self.values]
        if not values:
            raise ValueError("a palette needs at least one class")
        if len(values) > 255:
            raise ValueError(f"a palette holds at most 255 classes, got {len(values)}")
        if {len(v) for v in values} not in ({1}, {3}):
            raise ValueError(f"palette entries must all be 1-tuples or all 3-tuples: {values}")
        if len(set(values)) != len(values):
            raise ValueError(f"palette entries must be distinct: {values}")
        self.values = values
        if self.ignore is not None:
            self.ignore = tuple(int(v) for v in np.resize(np.atleast_1d(self.ignore), len(values[0])))
            if self.ignore in values:
                raise ValueError(f"the unlabelled value {self.ignore} is also a class value: {values}")

    @classmethod
    def identity(cls, k: int) -> Palette:
        """Class-index palette ``[(0,), (1,), ..., (k-1,)]``."""
        return cls([(i,) for i in range(int(k))])

    @property
    def n_classes(self) -> int:
        return len(self.values)

    @property
    def channels(self) -> int:
        """1 for grey/index palettes, 3 for colour palettes."""
        return len(self.values[0])

    @property
    def is_identity(self) -> bool:
        return self.values == [(i,) for i in range(len(self.values))]

    def describe(self) -> str:
        """Short text, e.g. ``"class indices 0..2"`` or ``"grey levels 0, 255"``."""
        if self.is_identity:
            return f"class indices 0..{self.n_classes - 1}"
        if self.channels == 1:
            return "grey levels " + ", ".join(str(v[0]) for v in self.values)
        return "colours " + ", ".join("(%d,%d,%d)" % v for v in self.values)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"values": [[0], [255]]}`` (``"ignore": [255]`` with partial labels)."""
        out: dict[str, Any] = {"values": [list(v) for v in self.values]}
        if self.ignore is not None:
            out["ignore"] = list(self.ignore)
        return out

    @classmethod
    def from_json(cls, obj: dict | list | str) -> Palette:
        """Inverse of :meth:`to_json`; also accepts the JSON text or the bare list."""
        if isinstance(obj, (str, bytes)):
            obj = json.loads(obj)
        ignore = None
        if isinstance(obj, dict):
            ignore = obj.get("ignore")
            obj = obj["values"]
        return cls([tuple(v) for v in obj], ignore=tuple(ignore) if ignore is not None else None)


def palette_for_classes(n_classes: int) -> Palette:
    """Identity palette for ``n_classes`` configured classes (masks hold indices)."""
    return Palette.identity(n_classes)


def _mask_values(raw: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` integer values; grey RGB collapsed to 2D, floats rounded."""
    if raw.ndim == 3:
        first = raw[..., 0]
        if np.array_equal(first, raw[..., 1]) and np.array_equal(first, raw[..., 2]):
            raw = first
    if np.issubdtype(raw.dtype, np.floating):
        raw = np.rint(np.nan_to_num(raw)).astype(np.int64)
    return raw


def _unique_rows(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of ``flat`` (N, C): ``(uniq (M, C), inverse (N,), counts (M,))``."""
    if flat.shape[1] == 1 and flat.dtype in (np.uint8, np.uint16):
        counts = np.bincount(flat[:, 0])
        uniq = np.flatnonzero(counts)
        position = np.zeros(counts.size, dtype=np.int64)
        position[uniq] = np.arange(uniq.size)
        return uniq[:, None], position[flat[:, 0]], counts[uniq]
    if flat.shape[1] == 3 and flat.dtype == np.uint8:
        keys = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
        ukeys, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        uniq = np.stack([ukeys >> 16, (ukeys >> 8) & 255, ukeys & 255], axis=1)
        return uniq, inverse.reshape(-1), counts
    uniq, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    return uniq, inverse.reshape(-1), counts


def evenly_spaced(items: list, limit: int) -> list:
    """At most ``limit`` of ``items``, evenly spaced over the list (first and last included)."""
    if len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def _file_table(path) -> tuple[dict, dict, int]:
    """Values covering >= DAMAGE_FRACTION of a (pixel-subsampled) mask.

    Returns ``({value: fraction}, {value: estimated pixel count}, estimated pixel total)``.
    """
    values = _mask_values(read_raw(path))
    step = max(1, int(np.ceil(np.sqrt(values.shape[0] * values.shape[1] / MAX_SAMPLE_PIXELS))))
    sub = values[::step, ::step]
    flat = sub.reshape(sub.shape[0] * sub.shape[1], -1)
    uniq, _, counts = _unique_rows(flat)
    keep = counts >= DAMAGE_FRACTION * flat.shape[0]
    fractions, totals = {}, {}
    for row, count in zip(uniq[keep].tolist(), counts[keep].tolist()):
        fractions[tuple(row)] = count / flat.shape[0]
        totals[tuple(row)] = count * step * step
    return fractions, totals, flat.shape[0] * step * step


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return float(np.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))))


def _is_blend(key: tuple[int, ...], levels: dict, tol: float) -> bool:
    """True when ``key`` lies (within ``tol``) strictly between two levels: an edge colour."""
    v = np.array(key, dtype=np.float64)
    points = [np.array(u, dtype=np.float64) for u in levels]
    for i, a in enumerate(points):
        for b in points[i + 1 :]:
            t = float(np.dot(v - a, b - a) / np.dot(b - a, b - a))
            if 0.0 < t < 1.0 and np.linalg.norm(v - (a + t * (b - a))) <= tol:
                return True
    return False


def _cluster(
    totals: dict, fractions: dict, tol: float, max_classes: int, where, blend_tol: float | None = None
) -> dict:
    """Greedy mode-seeking: frequent values become levels; rare ones close to a level (or,
    with ``blend_tol``, close to a mix of two levels) are damage.

    Returns ``{level: pixel count including absorbed values}``.
    """
    levels: dict[tuple[int, ...], int] = {}
    for key in sorted(totals, key=lambda k: (-totals[k], k)):
        rare = fractions[key] < SUBSTANTIAL_FRACTION
        near = [(d, u) for u in levels if (d := _distance(u, key)) <= tol]
        if near:
            _, u = min(near)
            if rare or totals[key] < 0.1 * totals[u]:
                levels[u] += totals[key]
                continue
        if rare and blend_tol is not None and _is_blend(key, levels, blend_tol):
            continue
        levels[key] = totals[key]
        if len(levels) > max_classes:
            raise UserError(
                f"{where}: masks hold more than {max_classes} distinct values or colours; "
                "expected class masks (binary, class indices, a few grey levels or colours)"
            )
    return levels


def _tally(paths: list[Path]) -> tuple[dict, dict, int]:
    """Merge :func:`_file_table` over files: max fraction and summed count per value."""
    fractions: dict[tuple[int, ...], float] = {}
    totals: dict[tuple[int, ...], int] = {}
    n_pixels = 0
    for path in paths:
        file_fractions, file_totals, file_pixels = _file_table(path)
        n_pixels += file_pixels
        for key, frac in file_fractions.items():
            fractions[key] = max(frac, fractions.get(key, 0.0))
            totals[key] = totals.get(key, 0) + file_totals[key]
    return fractions, totals, n_pixels


def discover_palette(
    paths: Iterable[str | os.PathLike], max_classes: int = 32, ignore: tuple[int, ...] | None = None
) -> Palette:
    """Find the class palette of a set of mask files.

    At most ``MAX_SAMPLE_FILES`` files (evenly spread) and ``MAX_SAMPLE_PIXELS`` pixels per
    file are read. Small index values 0..m (m < max_classes, at least half of them present)
    -> identity palette of m + 1 classes; otherwise grey levels ascending (0/255 ->
    ``[(0,), (255,)]``) or colours with black first, then by frequency. Values rarer than
    ``DAMAGE_FRACTION`` in every mask, rare values close to a frequent one and rare blends
    of two colours are damage. Raises ``UserError`` for more than ``max_classes`` classes or
    values spread out like an intensity image. ``ignore``: the value of unlabelled pixels (partial
    labels), left out of the discovery and kept as the palette's ``ignore``.
    """
    return _with_ignore(_discover(paths, max_classes, ignore), ignore)


def _with_ignore(palette: Palette, ignore) -> Palette:
    return palette if ignore is None else Palette(palette.values, ignore=ignore)


def _discover(paths, max_classes: int, ignore) -> Palette:
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("no mask files given: cannot find the mask values")
    where = paths[0].parent
    lossless = [p for p in paths if p.suffix.lower() not in (".jpg", ".jpeg")]
    if lossless and len(lossless) < len(paths):
        paths = lossless  # JPEG masks shift values (a 0 becomes 1): learn the palette from the exact files
    sample = evenly_spaced(paths, MAX_SAMPLE_FILES)
    fractions, totals, n_pixels = _tally(sample)
    if ignore is not None:
        for key in [k for k in totals if k == tuple(np.resize(ignore, len(k)))]:
            n_pixels -= totals.pop(key)
            fractions.pop(key, None)
        if not totals:
            raise UserError(f"{where}: every sampled mask pixel is unlabelled ({ignore}): nothing to learn from")
    colour = any(len(k) == 3 for k in totals)
    if colour:  # grey files in a colour set: v -> (v, v, v)
        fractions, totals = _widen(fractions, max), _widen(totals, sum)
    scale = 257 if max(max(k) for k in totals) > 255 else 1
    if any(p.suffix.lower() in (".jpg", ".jpeg") for p in sample):
        scale *= LOSSY_FACTOR  # JPEG shifts colours further; such close classes are lost anyway
    if not colour:
        values = sorted(k[0] for k in totals)
        top = values[-1]
        if values[0] >= 0 and top < max_classes and 2 * len(values) >= top + 1:
            return Palette.identity(top + 1)
        levels = _cluster(totals, fractions, GREY_TOLERANCE * scale, max_classes, where)
        _check_coverage(levels, totals, n_pixels, where)
        return Palette(sorted(levels))
    levels = _cluster(totals, fractions, RGB_TOLERANCE * scale, max_classes, where, blend_tol=BLEND_TOLERANCE * scale)
    _check_coverage(levels, totals, n_pixels, where)
    ordered = sorted(levels, key=lambda k: (k != (0, 0, 0), -levels[k], k))
    return Palette(ordered)


def _check_coverage(levels: dict, totals: dict, n_pixels: int, where) -> None:
    """Class masks hold mostly their class values; if the levels themselves cover less than
    half of the pixels, the values are spread out like an intensity image."""
    exact = sum(totals[level] for level in levels)
    if exact < MIN_LEVEL_COVERAGE * n_pixels:
        raise UserError(
            f"{where}: masks do not look like class masks (their values are spread out like "
            f"an intensity image; only {100 * exact / n_pixels:.0f}% of the pixels hold one of "
            f"{len(levels)} frequent values)"
        )


def _widen(table: dict, combine) -> dict:
    out: dict[tuple[int, ...], Any] = {}
    for key, value in table.items():
        key3 = key * 3 if len(key) == 1 else key
        out[key3] = combine([out[key3], value]) if key3 in out else value
    return out


def _nearest(uniq: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest palette entry for each row of ``uniq`` and whether it is exact."""
    index = np.empty(len(uniq), dtype=np.int64)
    exact = np.empty(len(uniq), dtype=bool)
    pal = palette.astype(np.float64)
    for start in range(0, len(uniq), 4096):
        block = uniq[start : start + 4096].astype(np.float64)
        d = ((block[:, None, :] - pal[None, :, :]) ** 2).sum(axis=2)
        index[start : start + 4096] = d.argmin(axis=1)
        exact[start : start + 4096] = d.min(axis=1) == 0
    return index, exact


def read_mask(path: str | os.PathLike, palette: Palette, strict_index: bool = False) -> tuple[np.ndarray, int]:
    """Read a mask as class indices: ``(mask (H, W) uint8, n_snapped)``.

    Values not in ``palette`` are snapped to the nearest entry; ``n_snapped`` counts those
    pixels (the caller warns). With ``strict_index=True`` (an index palette from configured
    classes) a value outside 0..K-1 raises ``UserError`` naming the file, value and K.
    """
    values = _mask_values(read_raw(path))
    h, w = values.shape[:2]
    k = palette.n_classes
    if values.ndim == 3 and palette.channels == 1:
        raise UserError(f"{path}: mask is a colour (RGB) image but the classes are {palette.describe()}")
    flat = values.reshape(h * w, -1)
    uniq, inverse, counts = _unique_rows(flat)
    if palette.channels == 3 and uniq.shape[1] == 1:
        uniq = np.repeat(uniq, 3, axis=1)
    unlabelled = _is_ignore(uniq, palette.ignore)
    if strict_index and palette.channels == 1:
        bad = uniq[((uniq[:, 0] < 0) | (uniq[:, 0] >= k)) & ~unlabelled, 0]
        if bad.size:
            raise UserError(
                f"{path}: mask value {int(bad.max())} is outside the {k} configured classes (values must be 0..{k - 1})"
            )
    index, exact = _nearest(uniq, np.array(palette.values))
    index[unlabelled] = IGNORE_INDEX
    n_snapped = int(counts[~exact & ~unlabelled].sum())
    mask = index.astype(np.uint8)[inverse].reshape(h, w)
    return mask, n_snapped


def _is_ignore(uniq: np.ndarray, ignore: tuple[int, ...] | None) -> np.ndarray:
    """Rows of ``uniq`` (``(n, 1)`` or ``(n, 3)`` values) that are the unlabelled value."""
    if ignore is None:
        return np.zeros(len(uniq), bool)
    return np.all(uniq == np.resize(np.asarray(ignore), uniq.shape[1]), axis=1)


def infer_ignore_value(paths: Iterable[str | os.PathLike]) -> tuple[int, ...] | None:
    """``(255,)`` when the masks are class indices ``0..m`` (m >= 1) plus 255, the one encoding where
    255 can only mean "unlabelled"; ``None`` otherwise (never for 0/255 binary masks, whose 255 is
    the foreground, nor for grey levels or colours)."""
    sample = evenly_spaced([Path(p) for p in paths], MAX_SAMPLE_FILES)
    _, totals, _ = _tally(sample)
    if not totals or any(len(k) != 1 for k in totals):
        return None
    values = sorted(k[0] for k in totals)
    if values[-1] != IGNORE_INDEX or len(values) < 3:
        return None
    return (IGNORE_INDEX,) if values[:-1] == list(range(len(values) - 1)) else None
