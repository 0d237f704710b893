"""The :class:`ImageSource` interface and the rules every format shares.

One rule set for every reader of pixels (``read_image``, ``read_raw``, ``tile``, streamed
``predict``): how a stored array becomes an image or a mask window (alpha dropped, palette TIFF
expanded to RGB for images and kept as indices for masks, booleans, dtypes), the decode cap, and
the one-line errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.zarr_images import axes_plan

#: Largest image (pixels) decoded whole: PNG/JPEG/BMP, a whole TIFF or zarr level (``read_all``),
#: or one compressed TIFF chunk. 150 megapixels is ~450 MB as RGB (plus the decoder's copy). The
#: one place of this limit (``tile --max-decode-megapixels`` passes another).
MAX_DECODE_PIXELS = 150_000_000
#: The tiled TIFF a too-large file should be converted to (said in the error).
CONVERT_HINT = "`vips tiffsave in.png out.tif --tile --pyramid --compression deflate`"


def megapixels(n: int) -> str:
    """``n`` pixels in megapixels, 3 significant digits (``"150"``, ``"0.12"``)."""
    return f"{n / 1e6:.3g}"


def fail(path, reason: str) -> UserError:
    """``UserError("<path>: cannot read image (<reason>)")``, the reason on one line."""
    reason = " ".join(str(reason).split())[:200] or "unknown error"
    return UserError(f"{path}: cannot read image ({reason})")


def reason_of(exc: BaseException) -> str:
    """A short reason for a decoder's exception."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image file"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if len(text) < 20 else text


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's logged warnings about broken files; we raise one clear error."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def normalise_dtype(arr: np.ndarray) -> np.ndarray:
    """Pixel values as ``uint8``/``uint16``/``float32`` without losing information (images):
    booleans 0/255, other integers by their value range, floats as ``float32``."""
    if arr.dtype in (np.uint8, np.uint16, np.float32):
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo >= 0 and hi <= 255 and arr.dtype.itemsize == 1:
        return arr.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return arr.astype(np.uint16)
    return arr.astype(np.float32)


def expand_colormap(arr: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """Palette TIFF indices ``(h, w)`` -> ``(h, w, 3) uint8`` with a ``(3, N)`` colormap."""
    cmap = np.asarray(colormap)
    cmap = (cmap // 257).astype(np.uint8) if cmap.max() > 255 else cmap.astype(np.uint8)
    return cmap.T[np.clip(arr, 0, cmap.shape[1] - 1)]


class ImageSource:
    """One image file, opened once: ask it for its ``shape``, ``levels``, ``pixel_size`` and windows.

    Attributes: ``path``, ``name``, ``kind`` (``"tiff"``, ``"zarr"``, ``"png"``, ``"jpeg"``,
    ``"bmp"`` or ``"image"``), ``level`` (the level windows come from), ``level_shapes`` (``(H, W)``
    per level, level 0 first), ``shape`` (of ``level``), ``levels`` (count), ``channels`` (of the
    windows: 1 or 3), ``stored_channels``, ``dtype`` (as stored), ``tile`` (stored tile ``(th, tw)``
    or ``None``), ``raw`` (mask mode), ``max_decode_pixels``.

    Windows (:meth:`read`, :meth:`read_rows`, :meth:`read_all`): images (``raw=False``) as
    ``(h, w, C)``, ``C`` in {1, 3}, ``uint8``/``uint16``/``float32`` (alpha dropped, palette TIFF
    expanded to RGB); masks (``raw=True``) as stored, ``(h, w)`` or ``(h, w, 3)``, palette indices
    kept, booleans 0/1 ``uint8``.
    """

    kind = "image"
    tile: tuple[int, int] | None = None

    def __init__(self, path, level: int, raw: bool, max_decode_pixels: int) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.level = int(level)
        self.raw = bool(raw)
        self.max_decode_pixels = int(max_decode_pixels)
        self.level_shapes: list[tuple[int, int]] = []
        self.stored_channels = 1
        self.dtype = np.dtype(np.uint8)
        self._colormap = None
        self._pixel_size: object = ...  # not looked up yet
        if self.level < 0:
            raise UserError(f"{self.path}: level must be 0 or more (got {level})")

    # ------------------------------------------------------------------ description
    @property
    def shape(self) -> tuple[int, int]:
        return self.level_shapes[self.level]

    @property
    def levels(self) -> int:
        return len(self.level_shapes)

    @property
    def channels(self) -> int:
        if self.raw:
            return 3 if self.stored_channels >= 3 else 1
        return 3 if self.stored_channels >= 3 or self._colormap is not None else 1

    @property
    def downsample(self) -> tuple[float, float]:
        """``(fy, fx)`` of ``level`` relative to level 0."""
        (h0, w0), (h, w) = self.level_shapes[0], self.shape
        return h0 / h, w0 / w

    @property
    def pixel_size(self) -> tuple[float, float] | None:
        """``(y_um, x_um)`` of ``level`` from the file's metadata, ``None`` when it states none."""
        if self._pixel_size is ...:
            try:
                self._pixel_size = self._find_pixel_size()
            except Exception:  # noqa: BLE001 - broken metadata: no pixel size; reading reports the file
                self._pixel_size = None
        return self._pixel_size

    def _find_pixel_size(self) -> tuple[float, float] | None:
        return None

    def no_level(self, level: int) -> UserError:
        n = self.levels
        return UserError(
            f"{self.path}: has no level {level} (it has {n} resolution level{'s' if n != 1 else ''}"
            f"{': 0..' + str(n - 1) if n > 1 else ''})"
        )

    # ------------------------------------------------------------------ reading
    def _read_stored(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:  # pragma: no cover - interface
        """Rows ``[y0, y1)``, columns ``[x0, x1)`` as stored: ``(h, w)`` or ``(h, w, c)``."""
        raise NotImplementedError

    def _read_whole(self) -> np.ndarray:
        h, w = self.shape
        return self._read_stored(0, h, 0, w)

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Window ``[y:y+h, x:x+w]`` of ``level`` (clipped to the image); see the class docstring."""
        H, W = self.shape
        y0, x0 = max(0, int(y)), max(0, int(x))
        y1, x1 = min(H, int(y) + int(h)), min(W, int(x) + int(w))
        return self.finish(self._read_stored(y0, max(y0, y1), x0, max(x0, x1)))

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Full-width rows ``[y0, y1)`` as ``(n, W, C)`` (streamed prediction)."""
        win = self.read(y0, 0, y1 - y0, self.shape[1])
        return win if win.ndim == 3 else win[:, :, None]

    def check_readable(self) -> None:
        """``UserError`` now when reading windows would be refused (a PNG above the decode cap,
        a TIFF or zarr chunk above it); nothing is decoded."""

    def check_decodable(self, what: str = "decoding a whole image") -> None:
        """``UserError`` when ``level`` has more than ``max_decode_pixels`` pixels."""
        h, w = self.shape
        if h * w > self.max_decode_pixels:
            raise UserError(
                f"{self.path}: is {w}x{h} ({megapixels(h * w)} megapixels), above the "
                f"{megapixels(self.max_decode_pixels)}-megapixel limit for {what}; {self._too_large_hint()}"
            )

    def _too_large_hint(self) -> str:
        return "cut it into tiles with `biomedseg tile` (predict reads it window by window)"

    def read_all(self) -> np.ndarray:
        """The whole ``level`` decoded (``UserError`` above ``max_decode_pixels`` pixels)."""
        self.check_decodable()
        return self.finish(self._read_whole())

    def finish(self, win: np.ndarray) -> np.ndarray:
        """A stored window as an image window (or a mask window when ``raw``)."""
        if win.ndim == 3 and win.shape[2] in (1, 2, 4):
            win = win[:, :, :3] if win.shape[2] == 4 else win[:, :, 0]
        if self._colormap is not None and not self.raw and win.ndim == 2:
            win = expand_colormap(win, self._colormap)
        if self.raw:
            win = win.astype(np.uint8) if win.dtype == np.bool_ else win
        else:
            win = normalise_dtype(win)
            win = win if win.ndim == 3 else win[:, :, None]
        if win.dtype.byteorder == ">":
            win = win.astype(win.dtype.newbyteorder("="))
        return np.ascontiguousarray(win)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PlannedSource(ImageSource):
    """A source over an array-like of some axes (a TIFF level, a zarr array, a memory map)."""

    def _set_array(self, array, axes: str | None) -> None:
        """Index ``array`` (axes letters or ``None`` to guess) as a 2D image."""
        shape = tuple(int(s) for s in array.shape)
        self._array = array
        self._template, self._y, self._x, self._c = axes_plan(shape, axes, self.name)
        self.stored_channels = shape[self._c] if self._c is not None else 1
        self.dtype = np.dtype(array.dtype)

    def _read_stored(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._index(self._array, y0, y1, x0, x1)

    def _index(self, array, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        idx = list(self._template)
        idx[self._y], idx[self._x] = slice(y0, y1), slice(x0, x1)
        try:
            block = np.asarray(array[tuple(idx)])
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt chunk or tile data
            raise UserError(
                f"{self.path}: cannot read window {x0},{y0} {x1 - x0}x{y1 - y0} ({reason_of(exc)})"[:400]
            ) from None
        kept = [i for i in range(len(idx)) if not isinstance(idx[i], int)]  # remaining axes, in order
        order = [kept.index(self._y), kept.index(self._x)] + ([kept.index(self._c)] if self._c is not None else [])
        return np.transpose(block, order)


class ArraySource(PlannedSource):
    """An in-memory array (numpy or zarr) read like a file: values as stored (``raw``), windows
    always ``(h, w, C)``. ``axes``: letters such as ``"YX"``, ``"YXC"``, ``"CYX"``; ``None`` guesses."""

    kind = "array"

    def __init__(self, array, axes: str | None = None, name: str = "<array>", tile=None) -> None:
        super().__init__(name, 0, True, 2**62)
        self._set_array(array, axes)
        shape = tuple(int(s) for s in array.shape)
        self.level_shapes = [(shape[self._y], shape[self._x])]
        self.tile = tile

    @property
    def channels(self) -> int:
        return self.stored_channels

    def finish(self, win: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(win if win.ndim == 3 else win[:, :, None])
