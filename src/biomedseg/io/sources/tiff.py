"""TIFF, BigTIFF, OME-TIFF and SVS-like pyramids, window by window.

The file is opened once (``tifffile.TiffFile``) and kept open while the source lives. How a
window of level ``level`` is read depends on how the level is stored:

- **uncompressed, contiguous, one page** (ImageJ/raw writers): memory-mapped; a window reads
  only its bytes, whatever the layout of strips;
- **chunks (tiles or strips) up to** ``LARGE_CHUNK_PIXELS`` (4 megapixels): ``tifffile``'s zarr
  store, a window decodes only the chunks it touches;
- **larger compressed chunks** (a whole image written as one strip, or strips of thousands of
  rows): every window touching a chunk would decode all of it again, so the level is decoded
  **once, whole, and cached** when it fits ``max_decode_pixels``; above that, if one chunk still
  fits, windows come from the zarr store (each chunk decoded per window that touches it); a
  chunk above ``max_decode_pixels`` cannot be decoded within the limit and is refused (a
  ``UserError`` telling how to re-save it tiled). Why: decoding a chunk needs its memory
  anyway, so caching costs nothing more than one decode while bands no longer re-decode it.

Palette (indexed colour) TIFFs are expanded to RGB for images and keep their indices for masks.
A page stack (several 2D planes that are not 3/4 colour planes) is refused.
"""

from __future__ import annotations

from contextlib import suppress

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.sources.base import CONVERT_HINT, PlannedSource, fail, megapixels, quiet_tifffile, reason_of

#: Compressed chunks above this many pixels are not re-decoded per window (see the module docstring).
LARGE_CHUNK_PIXELS = 4_000_000

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def tiff_axes(axes: str, shape: tuple[int, ...], path) -> str:
    """Check that a TIFF level is one 2D image (an optional colour axis) and return its axes
    letters for :func:`~biomedseg.io.zarr_images.axes_plan` (``UserError`` for page stacks)."""
    if "Y" not in axes or "X" not in axes:
        raise fail(path, f"axes {axes!r} hold no 2D plane")
    h, w = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    for a, n in zip(axes, shape, strict=True):
        if a not in "YXSC" and n > 1 and n not in (3, 4):
            raise fail(path, f"has {n} pages or planes of {h}x{w}; only single 2D images are supported")
    return axes


class TiffSource(PlannedSource):
    """A level of a TIFF file (see the module docstring)."""

    kind = "tiff"

    def __init__(self, path, level: int, raw: bool, max_decode_pixels: int, fh) -> None:
        """``fh``: the file opened for reading (closed with the source)."""
        import tifffile

        super().__init__(path, level, raw, max_decode_pixels)
        self._fh = fh
        self._store = None
        self._cache = None
        self._cache_level = False
        try:
            with quiet_tifffile():
                self._tif = tifffile.TiffFile(fh, name=self.path.name)
        except Exception as exc:  # noqa: BLE001 - any parser failure is a problem with the user's file
            raise fail(self.path, reason_of(exc)) from None
        try:
            self._describe(tifffile)
        except BaseException:
            self.close()
            raise

    def _describe(self, tifffile) -> None:
        tif = self._tif
        if not tif.series or not tif.pages:
            raise fail(self.path, "no image data in the TIFF file")
        levels = tif.series[0].levels
        for lev in levels:
            axes = tiff_axes(lev.axes, lev.shape, self.path)
            self.level_shapes.append((int(lev.shape[axes.index("Y")]), int(lev.shape[axes.index("X")])))
        if self.level >= len(levels):
            raise self.no_level(self.level)
        self._lev = lev = levels[self.level]
        page = lev.pages[0] if lev.pages else tif.pages[0]
        self._page = page
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE and getattr(page, "colormap", None) is not None:
            self._colormap = page.colormap
        self.tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
        self._set_array(_LevelShape(lev), lev.axes)

    # ------------------------------------------------------------------ how to read
    def _memmappable(self) -> bool:
        p = self._page
        return (
            len(self._lev.pages) == 1
            and bool(p.is_contiguous)
            and p.compression == 1
            and not p.is_tiled
            and p.bitspersample in (8, 16, 32, 64)
        )

    def _open_reader(self):
        """The array windows are read from: a memory map, the whole level (cached) or the zarr store."""
        if self._memmappable():
            try:
                dtype = self._lev.dtype.newbyteorder(self._tif.byteorder)
                return np.memmap(
                    self._fh, dtype=dtype, mode="r", offset=int(self._page.dataoffsets[0]), shape=tuple(self._lev.shape)
                )
            except (ValueError, OSError):
                pass  # fall back to the zarr store
        import zarr

        try:
            self._store = self._tif.series[0].aszarr(level=self.level)
            arr = zarr.open(self._store, mode="r")
        except Exception as exc:  # noqa: BLE001
            raise fail(self.path, reason_of(exc)) from None
        chunk_px = int(np.prod([arr.chunks[self._y], arr.chunks[self._x]]))
        if chunk_px > self.max_decode_pixels:
            kind = "tile" if self._page.is_tiled else "strip"
            raise UserError(
                f"{self.path}: is stored in {kind}s of {megapixels(chunk_px)} megapixels, above the "
                f"{megapixels(self.max_decode_pixels)}-megapixel decoding limit; re-save it as a tiled TIFF "
                f"(e.g. {CONVERT_HINT.replace('in.png', 'in.tif')}) or raise the limit"
            )
        h, w = self.shape
        self._cache_level = chunk_px > LARGE_CHUNK_PIXELS and h * w <= self.max_decode_pixels
        return arr

    def _decode_level(self) -> np.ndarray:
        try:
            with quiet_tifffile():
                return self._lev.asarray()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a problem with the user's file
            raise fail(self.path, reason_of(exc)) from None

    def check_readable(self) -> None:
        if isinstance(self._array, _LevelShape):
            self._array = self._open_reader()

    def _read_stored(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.check_readable()
        if self._cache_level and self._cache is None:  # large chunks: the level decoded once, kept
            self._array = self._cache = self._decode_level()
        return self._index(self._array, y0, y1, x0, x1)

    def _read_whole(self) -> np.ndarray:
        if self._memmappable():
            self.check_readable()
        elif self._cache is None:  # one decode of every chunk (threaded by tifffile), kept for windows
            self._array = self._cache = self._decode_level()
        h, w = self.shape
        return self._index(self._array, 0, h, 0, w)

    def _find_pixel_size(self):
        from biomedseg.io.pixel_size import tiff_pixel_size

        return tiff_pixel_size(self._tif, self.level)

    def close(self) -> None:
        if self._store is not None:
            with suppress(Exception):  # closing a store of a broken file
                self._store.close()
            self._store = None
        self._array = self._cache = None
        if getattr(self, "_tif", None) is not None:
            self._tif.close()
        self._fh.close()


class _LevelShape:
    """Stands for a level's array until the first window is read (shape and dtype only)."""

    def __init__(self, lev) -> None:
        self.shape = tuple(int(s) for s in lev.shape)
        self.dtype = lev.dtype


def is_tiff(head: bytes) -> bool:
    return head[:4] in TIFF_MAGIC
