"""Tile sources: 2D images read by full-width row bands for streaming prediction.

A :class:`TileSource` has ``shape`` ``(H, W)``, ``channels`` (1..4 as stored), ``dtype`` and
returns rows ``[y0, y1)`` as ``(y1 - y0, W, C)`` arrays of that dtype. :func:`open_source` picks
one for

- tiled/striped TIFF, BigTIFF, OME-TIFF (``tifffile`` zarr store, pyramid level selectable;
  uncompressed contiguous TIFFs are read by file offsets, a band at a time);
- zarr / OME-Zarr arrays (OME multiscales level selectable);
- any other image ``biomedseg.io.read_image`` reads, or an in-memory array.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.zarr_images import axes_plan as _axes_plan
from biomedseg.io.zarr_images import open_level

log = logging.getLogger("biomedseg")

__all__ = ["ArraySource", "TileSource", "open_source"]


class TileSource:
    """A 2D image read by full-width row bands.

    Attributes: ``shape`` ``(H, W)``, ``channels`` (1..4 as stored), ``dtype``, ``tile``
    (the stored tile ``(th, tw)`` or ``None``). :meth:`read_rows` returns rows ``[y0, y1)`` as
    ``(y1 - y0, W, C)``.
    """

    shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    tile: tuple[int, int] | None = None
    name: str = "<array>"

    def read_rows(self, y0: int, y1: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ArraySource(TileSource):
    """Any array supporting numpy slicing: numpy, ``np.memmap``, zarr arrays, tifffile stores.

    ``axes``: letters such as ``"YX"``, ``"YXS"``, ``"CYX"``, ``"TCZYX"`` (OME); ``None`` guesses
    ``(H, W)``, ``(H, W, C<=4)`` or ``(C, H, W)`` after dropping singleton axes.
    """

    def __init__(self, array, axes: str | None = None, name: str = "<array>", tile=None, closer=None):
        self.array = array
        self.name = name
        shape = tuple(int(s) for s in array.shape)
        self._template, self._y, self._x, self._c = _axes_plan(shape, axes, name)
        self.shape = (shape[self._y], shape[self._x])
        self.channels = shape[self._c] if self._c is not None else 1
        self.dtype = np.dtype(array.dtype)
        self.tile = tile
        self._closer = closer

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        idx = list(self._template)
        idx[self._y] = slice(y0, y1)
        block = np.asarray(self.array[tuple(idx)])
        kept = [i for i in range(len(idx)) if not isinstance(idx[i], int)]  # remaining axes, in order
        order = [kept.index(self._y), kept.index(self._x)] + ([kept.index(self._c)] if self._c is not None else [])
        block = np.transpose(block, order)
        return block if block.ndim == 3 else block[:, :, None]

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


class _ContiguousTiffSource(TileSource):
    """Uncompressed contiguous TIFF pages (ImageJ/raw writers): rows read by file offset, so a
    band costs a band of memory (tifffile's zarr store would decode the page as one chunk)."""

    def __init__(self, path: Path, page, axes: str, shape: tuple[int, ...], dtype: np.dtype):
        self.name = str(path)
        self._offset = int(page.dataoffsets[0])
        self._template, self._y, self._x, self._c = _axes_plan(shape, axes, self.name)
        if self._c is not None and self._c not in (0, len(shape) - 1):
            raise ValueError("unsupported layout")
        self._planar = self._c is not None and self._c < self._y
        self.shape = (shape[self._y], shape[self._x])
        self.channels = shape[self._c] if self._c is not None else 1
        self.dtype = np.dtype(dtype)
        self._fh = open(path, "rb")
        self.tile = None

    def _read(self, offset: int, count: int) -> np.ndarray:
        self._fh.seek(offset)
        buf = self._fh.read(count * self.dtype.itemsize)
        return np.frombuffer(buf, dtype=self.dtype, count=count).astype(self.dtype.newbyteorder("="))

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        h, w = self.shape
        n, c, item = y1 - y0, self.channels, self.dtype.itemsize
        if self._planar:
            planes = [self._read(self._offset + (p * h * w + y0 * w) * item, n * w).reshape(n, w) for p in range(c)]
            return np.stack(planes, axis=-1)
        return self._read(self._offset + y0 * w * c * item, n * w * c).reshape(n, w, c)

    def close(self) -> None:
        self._fh.close()


def _tiff_source(path: Path, level: int) -> TileSource:
    """A source for pyramid level ``level`` of the TIFF at ``path``; the file is closed with the
    source (or at once on error)."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise UserError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    try:
        return _tiff_level_source(tif, path, level)
    except BaseException:
        tif.close()
        raise


def _tiff_level(tif, path: Path, level: int):
    """Level ``level`` of the first series of an open ``tifffile.TiffFile`` (UserError if absent)."""
    if not tif.series:
        raise UserError(f"{path}: cannot read image (no image data in the TIFF file)")
    levels = tif.series[0].levels
    if not 0 <= level < len(levels):
        raise UserError(f"{path}: --level {level} does not exist (the file has {len(levels)} "
                        f"level{'s' if len(levels) != 1 else ''}: 0..{len(levels) - 1})")
    return levels[level]


def _is_uncompressed_contiguous(lev, page) -> bool:
    """One uncompressed, untiled, contiguous page of whole-byte samples: readable by offset."""
    return (len(lev.pages) == 1 and page.is_contiguous and page.compression == 1 and not page.is_tiled
            and page.bitspersample in (8, 16, 32, 64))


def _tiff_level_source(tif, path: Path, level: int) -> TileSource:
    """Offset reader for plain contiguous pages, else ``tifffile``'s zarr store of the level."""
    import tifffile
    import zarr

    lev = _tiff_level(tif, path, level)
    page = lev.pages[0] if lev.pages else tif.pages[0]
    tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
    if page.photometric == tifffile.PHOTOMETRIC.PALETTE:
        raise UserError(f"{path}: palette (indexed colour) TIFFs are not supported for streaming")
    if _is_uncompressed_contiguous(lev, page):
        try:
            dtype = lev.dtype.newbyteorder(tif.byteorder)
            src = _ContiguousTiffSource(path, page, lev.axes, tuple(lev.shape), dtype)
            tif.close()
            return src
        except ValueError:  # channel layout the offset reader does not handle
            pass
    store = tif.series[0].aszarr(level=level)  # (a pyramid's level 0 alone, not the multiscale group)
    arr = zarr.open(store, mode="r")

    def closer():
        store.close()
        tif.close()

    return ArraySource(arr, axes=lev.axes, name=str(path), tile=tile, closer=closer)


def _zarr_source(path: Path, level: int) -> TileSource:
    z = open_level(path, level)
    chunks = getattr(z.array, "chunks", None)
    return ArraySource(z.array, axes=z.axes, name=str(path), tile=tuple(chunks[-2:]) if chunks else None)


def open_source(obj, level: int = 0) -> TileSource:
    """A :class:`TileSource` for a path (TIFF, ``.zarr``, or any image ``read_image`` reads),
    a zarr array or a numpy array ``(H, W)`` / ``(H, W, C)``."""
    if isinstance(obj, TileSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir() or path.suffix.lower() == ".zarr":
            return _zarr_source(path, level)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_source(path, level)
        from biomedseg.io import read_image

        if level:
            log.warning("%s: --level %d ignored (not a pyramid TIFF or zarr)", path, level)
        return ArraySource(read_image(path), axes="YXC", name=str(path))
    return ArraySource(obj)
