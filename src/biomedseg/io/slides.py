"""Windowed reading of large 2D images (whole-slide images, mosaics) without decoding them whole.

:class:`SlideReader` serves rectangular windows of one image:

- **TIFF** (tiled or stripped, BigTIFF, OME-TIFF / SVS-like pyramids): opened lazily with
  ``tifffile.imread(path, aszarr=True, level=level)`` and ``zarr.open(store, mode="r")``;
  a window decodes only the tiles/strips it touches. Uncompressed TIFFs stored in one piece
  are memory-mapped instead. A TIFF whose single compressed chunk exceeds the memory limit
  (e.g. a 40k x 40k image written as one strip) is refused with a clear ``UserError``.
- **zarr / OME-Zarr** (a ``.zarr`` folder, :mod:`biomedseg.io.zarr_images`): windows are read
  from the chunks they touch; OME multiscales levels are the pyramid levels.
- **PNG / JPEG / BMP** must be decoded whole: the decoded size is estimated from the header
  and an image above ``max_decode_pixels`` is refused with a ``UserError`` suggesting a tiled
  TIFF; otherwise it is decoded once and windows are slices of it.

Images (``raw=False``) come back as ``(h, w, C)`` like :func:`biomedseg.io.read_image`
(alpha dropped, palette TIFF expanded to RGB, ``C`` in {1, 3}); masks (``raw=True``) as stored,
``(h, w)`` or ``(h, w, 3)``, palette indices kept, like :func:`biomedseg.io.read_raw`.
Imports nothing of the project except ``errors`` and ``io.images``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.images import (  # noqa: F401  (MAX_DECODE_PIXELS re-exported)
    MAX_DECODE_PIXELS,
    _apply_tiff_colormap,
    _quiet_tifffile,
    _sniff,
    read_image,
    read_raw,
)

#: Above this many pixels per chunk an uncompressed contiguous TIFF is memory-mapped.
MEMMAP_CHUNK_PIXELS = 16_000_000


class SlideReader:
    """Random-access windows of one image (see the module docstring).

    Attributes: ``shape`` ``(H, W)`` at the chosen level, ``channels`` (1 or 3 for images; as
    stored for masks), ``dtype``, ``n_levels``, ``level_shapes`` (``(H, W)`` per level),
    ``downsample`` ``(fy, fx)`` of the level relative to level 0, ``whole`` (decoded whole).
    """

    def __init__(self, path: str | os.PathLike, level: int = 0, raw: bool = False,
                 max_decode_pixels: int = MAX_DECODE_PIXELS) -> None:
        self.path = Path(path)
        self.level = int(level)
        self.raw = raw
        self.max_decode_pixels = int(max_decode_pixels)
        self._store = None
        self._array = None  # zarr array, memmap or decoded ndarray
        self._index = None  # how to index the stored array: axes order
        self._colormap = None
        self.whole = False
        if self.level < 0:
            raise UserError(f"{self.path}: level must be 0 or more (got {level})")
        kind = _sniff(self.path)
        if kind == "zarr":
            self._open_zarr()
        elif kind == "tiff":
            self._open_tiff()
        else:
            self._open_whole()

    # ------------------------------------------------------------------ opening
    def _fail(self, problem: str) -> UserError:
        return UserError(f"{self.path}: {problem}")

    def _open_tiff(self) -> None:
        import tifffile

        try:
            with _quiet_tifffile(), tifffile.TiffFile(self.path) as tif:
                if not tif.series:
                    raise self._fail("cannot read image (no image data in the TIFF file)")
                series = tif.series[0]
                levels = series.levels
                self.level_shapes = []
                self.n_levels = len(levels)
                if self.level >= self.n_levels:
                    raise self._fail(f"has no level {self.level} (it has {self.n_levels} "
                                     f"resolution level{'s' if self.n_levels > 1 else ''})")
                axes_all = [lv.axes for lv in levels]
                shapes_all = [lv.shape for lv in levels]
                page = levels[self.level].pages[0] if levels[self.level].pages else tif.pages[0]
                photometric = page.photometric
                colormap = getattr(page, "colormap", None)
                compressed = page.compression != 1
                contiguous = bool(getattr(page, "is_contiguous", False)) and len(series.pages) == 1
                tiled = page.is_tiled
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken file is the user's problem
            raise self._fail(f"cannot read image ({' '.join(str(exc).split())[:200]})") from None
        for axes, shape in zip(axes_all, shapes_all):
            self.level_shapes.append(self._yx(axes, shape))
        axes, shape = axes_all[self.level], shapes_all[self.level]
        self._axes = axes
        if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None and not self.raw:
            self._colormap = colormap
        self._plan(axes, shape)
        try:
            store = tifffile.imread(self.path, aszarr=True, level=self.level)
            import zarr

            arr = zarr.open(store, mode="r")
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot read image ({' '.join(str(exc).split())[:200]})") from None
        chunk_px = int(np.prod([c for a, c in zip(axes, arr.chunks) if a in "YX"]))
        big = chunk_px > min(MEMMAP_CHUNK_PIXELS, self.max_decode_pixels)
        if big and not compressed and contiguous and self.level == 0:
            try:
                store.close()
                self._array = tifffile.memmap(self.path)
                self._store = None
                return
            except Exception:  # noqa: BLE001 - fall back to the zarr store
                store = tifffile.imread(self.path, aszarr=True, level=self.level)
                arr = zarr.open(store, mode="r")
        if chunk_px > self.max_decode_pixels:
            store.close()
            kind = "tile" if tiled else "strip"
            raise self._fail(
                f"is stored in {kind}s of {chunk_px / 1e6:.0f} megapixels, above the "
                f"{self.max_decode_pixels / 1e6:.0f}-megapixel decoding limit; re-save it as a tiled "
                "TIFF (e.g. `vips tiffsave in.tif out.tif --tile --pyramid --compression deflate`) "
                "or raise max_decode_pixels")
        self._store = store
        self._array = arr

    def _open_zarr(self) -> None:
        from biomedseg.io.zarr_images import level_shape, open_level, plan_letters

        z = open_level(self.path, self.level)
        self.n_levels = z.n_levels
        self.level_shapes = [level_shape(z, i, str(self.path)) for i in range(z.n_levels)]
        shape = tuple(int(s) for s in z.array.shape)
        self._axes = plan_letters(shape, z.axes, str(self.path))
        self._plan(self._axes, shape)
        chunks = getattr(z.array, "chunks", None) or shape
        chunk_px = int(np.prod([c for a, c in zip(self._axes, chunks) if a in "YX"]))
        if chunk_px > self.max_decode_pixels:
            raise self._fail(f"is stored in zarr chunks of {chunk_px / 1e6:.0f} megapixels, above the "
                             f"{self.max_decode_pixels / 1e6:.0f}-megapixel decoding limit; re-chunk it "
                             "(e.g. 1024x1024) or raise max_decode_pixels")
        self._array = z.array

    @staticmethod
    def _yx(axes: str, shape) -> tuple[int, int]:
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])

    def _plan(self, axes: str, shape) -> None:
        """Check the axes (2D image, optional colour axis) and remember the channel axis."""
        if "Y" not in axes or "X" not in axes:
            raise self._fail(f"cannot read image (axes {axes!r} hold no 2D plane)")
        chan = None
        for a, n in zip(axes, shape):
            if a in "YX":
                continue
            if a in "SC" and n <= 4 and chan is None:
                chan = a
            elif n != 1:
                raise self._fail(f"is a stack of {n} planes along axis {a!r}; only single 2D "
                                 "images can be tiled")
        self.shape = self._yx(axes, shape)
        self._chan = chan
        stored = int(shape[axes.index(chan)]) if chan else 1
        self.stored_channels = stored
        if self.raw:
            self.channels = 3 if stored >= 3 else 1
        else:
            self.channels = 3 if stored >= 3 or self._colormap is not None else 1

    def _open_whole(self) -> None:
        from PIL import Image

        try:
            with Image.open(self.path) as im:
                w, h = im.size
                bands = len(im.getbands())
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot read image ({' '.join(str(exc).split())[:200]})") from None
        if self.level != 0:
            raise self._fail(f"has no level {self.level} (only TIFF files hold resolution levels)")
        if h * w > self.max_decode_pixels:
            gb = h * w * max(bands, 1) * 2 / 1e9
            raise self._fail(
                f"is {w}x{h} ({h * w / 1e6:.0f} megapixels); {self.path.suffix or 'this format'} "
                f"must be decoded whole (about {gb:.1f} GB with the decoder's copy), above the "
                f"{self.max_decode_pixels / 1e6:.0f}-megapixel limit; convert it to a tiled TIFF "
                "(e.g. `vips tiffsave in.png out.tif --tile --pyramid --compression deflate`) or "
                "raise max_decode_pixels")
        arr = read_raw(self.path) if self.raw else read_image(self.path)
        if not self.raw and arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        self._array = arr
        self.whole = True
        self.n_levels = 1
        self.level_shapes = [arr.shape[:2]]
        self.shape = (int(arr.shape[0]), int(arr.shape[1]))
        self._axes = "YXS" if arr.ndim == 3 else "YX"
        self._chan = "S" if arr.ndim == 3 else None
        self.stored_channels = arr.shape[2] if arr.ndim == 3 else 1
        self.channels = 3 if arr.ndim == 3 else 1

    # ------------------------------------------------------------------ reading
    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    @property
    def downsample(self) -> tuple[float, float]:
        h0, w0 = self.level_shapes[0]
        h, w = self.shape
        return h0 / h, w0 / w

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Window ``[y:y+h, x:x+w]`` (clipped to the image) as ``(h, w)`` or ``(h, w, C)``."""
        H, W = self.shape
        y0, x0 = max(0, int(y)), max(0, int(x))
        y1, x1 = min(H, int(y) + int(h)), min(W, int(x) + int(w))
        if self.whole:
            win = self._array[y0:y1, x0:x1]
            return np.ascontiguousarray(win)
        index = []
        for a in self._axes:
            if a == "Y":
                index.append(slice(y0, y1))
            elif a == "X":
                index.append(slice(x0, x1))
            elif a == self._chan:
                index.append(slice(None))
            else:
                index.append(0)
        try:
            win = np.asarray(self._array[tuple(index)])
        except Exception as exc:  # noqa: BLE001 - corrupt tile data
            raise self._fail(f"cannot read window {x0},{y0} {x1 - x0}x{y1 - y0} "
                             f"({' '.join(str(exc).split())[:200]})") from None
        kept = [a for a in self._axes if a in "YX" or a == self._chan]
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(self._chan)] if self._chan else [])
        win = np.transpose(win, order)
        return self._finish(win)

    def _finish(self, win: np.ndarray) -> np.ndarray:
        if win.ndim == 3:
            c = win.shape[2]
            if c == 4:
                win = win[:, :, :3]
            elif c == 2:
                win = win[:, :, 0]
            elif c == 1:
                win = win[:, :, 0]
        if self._colormap is not None and win.ndim == 2:
            win = _apply_tiff_colormap(win, self._colormap)
        if win.dtype == np.bool_:
            win = win.astype(np.uint8) * (1 if self.raw else 255)
        if not self.raw and win.dtype not in (np.uint8, np.uint16, np.float32):
            if np.issubdtype(win.dtype, np.floating):
                win = win.astype(np.float32)
            elif np.issubdtype(win.dtype, np.integer) and win.size and win.min() >= 0 and win.max() <= 65535:
                win = win.astype(np.uint16)
            else:
                win = win.astype(np.float32)
        return np.ascontiguousarray(win)

    def close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001
                pass
            self._store = None
        self._array = None

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def slide_shape(path: str | os.PathLike, level: int = 0) -> tuple[int, int]:
    """``(H, W)`` of ``path`` at ``level`` from the header (no decoding)."""
    path = Path(path)
    if _sniff(path) not in ("tiff", "zarr"):
        if level:
            raise UserError(f"{path}: has no level {level} (only TIFF files hold resolution levels)")
        from biomedseg.io.images import image_shape

        return image_shape(path)
    with SlideReader(path, level=level, max_decode_pixels=2**62) as r:
        return r.shape
