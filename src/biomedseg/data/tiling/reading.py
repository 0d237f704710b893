"""Slide reading for the tiling: window origins, band-wise window reading, mask windows in
the image's pyramid level and the class palette of the masks.

Images are read band by band (one row of windows, full width or in column chunks of at most
``BAND_BYTES``) through :func:`biomedseg.io.sources.open_source`, so tiled TIFF/BigTIFF/
OME-TIFF are never decoded whole.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.data.class_palette import add_foreground_class, default_class_names, palette_from_meta
from biomedseg.data.tiling.sources import Source
from biomedseg.io.masks import Palette, discover_palette
from biomedseg.io.sources import ImageSource, open_source
from biomedseg.io.writers import write_png

#: Largest band (image rows of one window row) read at once; wider images are read in chunks.
BAND_BYTES = 256 * 2**20
#: Mask windows sampled per mask to discover the palette.
PALETTE_WINDOWS = 24
_BACKGROUND_NAMES = ("background", "bg", "back")


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride``, the last one aligned to the border."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


# ----------------------------------------------------------------------------- bands
def _column_chunks(xs: list[int], size: int, width: int, row_bytes: int) -> list[list[int]]:
    """Group window origins of one row so that each band chunk stays under BAND_BYTES."""
    max_w = max(size, BAND_BYTES // max(row_bytes * size, 1))
    chunks, cur = [], []
    for x in xs:
        if cur and (x + size) - cur[0] > max_w:
            chunks.append(cur)
            cur = []
        cur.append(x)
    if cur:
        chunks.append(cur)
    return chunks


def read_windows(reader, ys, xs, size, height, width, row_bytes, rows_needed=None):
    """Yield ``(y, x, window)`` for every window, reading one band chunk at a time.

    ``reader``: anything with ``read(y, x, h, w)`` (an :class:`~biomedseg.io.sources.ImageSource`,
    :class:`MaskWindows`);
    windows are ``min(size, height) x min(size, width)`` views of the band (``(h, w)`` or
    ``(h, w, C)``, the reader's dtype). ``rows_needed`` (``{y: [x, ...]}``) restricts the
    windows read (``xs`` is then ignored); ``row_bytes``: bytes per pixel of a band row.
    """
    h = min(size, height)
    w = min(size, width)
    for y in ys:
        cols = xs if rows_needed is None else rows_needed.get(y, [])
        if not cols:
            continue
        for chunk in _column_chunks(sorted(cols), size, width, row_bytes):
            x0, x1 = chunk[0], min(chunk[-1] + w, width)
            band = reader.read(y, x0, h, x1 - x0)
            for x in chunk:
                yield y, x, band[:, x - x0 : x - x0 + w]


# ----------------------------------------------------------------------------- masks
class MaskWindows:
    """Mask windows (values as stored) aligned with the image at ``level``: a mask without that
    pyramid level is sampled at the level's resolution from its level 0 (nearest pixel)."""

    def __init__(self, path: Path, level: int, image: ImageSource, max_decode_pixels: int) -> None:
        self.path = path
        self.factor = (1.0, 1.0)
        try:
            self.reader = open_source(path, level, raw=True, max_decode_pixels=max_decode_pixels)
        except UserError:
            if level == 0:
                raise
            # masks rarely have pyramids: sample the level-0 mask at the level's resolution
            self.reader = open_source(path, 0, raw=True, max_decode_pixels=max_decode_pixels)
            if self.reader.shape != image.level_shapes[0]:
                raise UserError(
                    f"{path}: mask is {self.reader.shape[1]}x{self.reader.shape[0]} but its image "
                    f"is {image.level_shapes[0][1]}x{image.level_shapes[0][0]}"
                ) from None
            self.factor = image.downsample
        if self.factor == (1.0, 1.0) and self.reader.shape != image.shape:
            raise UserError(
                f"{path}: mask is {self.reader.shape[1]}x{self.reader.shape[0]} but its image "
                f"is {image.shape[1]}x{image.shape[0]} (level {level})"
            )

    @property
    def row_bytes(self) -> int:
        """Bytes read per pixel of a window row (larger when sampling a finer mask)."""
        r = self.reader
        return int(np.ceil(r.stored_channels * r.dtype.itemsize * self.factor[0] * self.factor[1]))

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``(h, w)`` or ``(h, w, C)`` stored mask values of the level window at ``(y, x)``."""
        if self.factor == (1.0, 1.0):
            return self.reader.read(y, x, h, w)
        fy, fx = self.factor
        H0, W0 = self.reader.shape
        # the level-0 pixel nearest to each level pixel's centre (2x: even rows/columns)
        rows = np.clip(np.floor((np.arange(y, y + h) + 0.5) * fy - 0.5).astype(np.int64), 0, H0 - 1)
        cols = np.clip(np.floor((np.arange(x, x + w) + 0.5) * fx - 0.5).astype(np.int64), 0, W0 - 1)
        block = self.reader.read(int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
        return np.ascontiguousarray(block[rows - rows[0]][:, cols - cols[0]])

    def close(self) -> None:
        self.reader.close()


def _sample_windows(sources: list[Source], level: int, size: int, max_decode_pixels: int) -> list[np.ndarray]:
    """Up to ``PALETTE_WINDOWS`` mask windows per mask (evenly spread), values as stored."""
    out = []
    per = max(2, min(PALETTE_WINDOWS, 400 // max(len(sources), 1)))
    for s in sources:
        with open_source(s.image, level, max_decode_pixels=max_decode_pixels) as img:
            mw = MaskWindows(s.mask, level, img, max_decode_pixels)
            try:
                H, W = img.shape
                ys, xs = window_starts(H, size, size), window_starts(W, size, size)
                grid = [(y, x) for y in ys for x in xs]
                picks = np.linspace(0, len(grid) - 1, min(per, len(grid))).round().astype(int)
                for k in sorted(set(picks.tolist())):
                    y, x = grid[k]
                    out.append(mw.read(y, x, min(size, H), min(size, W)))
            finally:
                mw.close()
    return out


def _discover_window_palette(sources: list[Source], level: int, size: int, max_decode_pixels: int) -> Palette:
    """``discover_palette`` on mask windows sampled over every mask (saved as temporary PNGs)."""
    windows = _sample_windows(sources, level, size, max_decode_pixels)
    with tempfile.TemporaryDirectory(prefix="biomedseg_palette_") as tmp:
        paths = []
        for k, win in enumerate(windows):
            p = Path(tmp) / f"w{k:05d}.png"
            if win.dtype not in (np.uint8, np.uint16):
                win = np.clip(np.rint(np.nan_to_num(win)), 0, 65535).astype(np.uint16)
            if win.ndim == 3 and win.dtype != np.uint8:
                win = (win // 257).astype(np.uint8)
            write_png(p, win)
            paths.append(p)
        return discover_palette(paths)


def mask_palette(
    sources: list[Source], meta: dict, level: int, size: int, max_decode_pixels: int, palette: Palette | None
) -> tuple[Palette, list[str], int]:
    """``(palette, class names, background index)`` of the masks: the given palette, else the
    ``dataset.json`` one, else discovered from sampled windows (index masks with named classes:
    identity of K classes). Raises ``UserError`` if dataset.json names another class count."""
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else None
    if palette is None:
        palette = palette_from_meta(meta)
    if palette is None:
        palette = _discover_window_palette(sources, level, size, max_decode_pixels)
        if classes and palette.channels == 1 and all(v[0] < 32 for v in palette.values) and palette.is_identity:
            palette = Palette.identity(len(classes))
    k = palette.n_classes
    if classes and len(classes) != k:
        raise UserError(
            f"dataset.json names {len(classes)} classes but the masks use {k} values ({palette.describe()})"
        )
    if not classes:
        classes = default_class_names(k)
        if k < 2:
            palette = add_foreground_class(palette)
    bg = next((i for i, n in enumerate(classes) if str(n).lower() in _BACKGROUND_NAMES), 0)
    return palette, [str(c) for c in classes], bg
