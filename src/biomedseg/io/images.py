"""Reading 2D images from disk.

PNG, JPEG and BMP are decoded by Pillow, TIFF (including LZW/deflate-compressed and BigTIFF)
by tifffile with imagecodecs, and 16-bit colour PNGs (which Pillow truncates to 8 bit) by
imagecodecs. The decoder is chosen from the file's first bytes, not its extension. A ``.zarr``
folder (zarr / OME-Zarr, :mod:`biomedseg.io.zarr_images`) is an image too: its full-resolution
level is read, up to ``MAX_DECODE_PIXELS`` pixels.

Conventions (see ``docs/design.md``):

- :func:`read_image` returns ``(H, W, C)`` with ``C`` in {1, 3}; dtype ``uint8`` or
  ``uint16`` (float TIFFs become ``float32``). Alpha is dropped, palette images are expanded
  to RGB.
- :func:`read_raw` returns the pixel values as stored, ``(H, W)`` or ``(H, W, 3)``, with
  alpha dropped but palette indices kept (used for masks).
- Every failure to read a file raises ``UserError("<path>: cannot read image (<reason>)")``.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from biomedseg.core.errors import UserError
from biomedseg.io.zarr_images import ZARR_SUFFIX, is_zarr, read_zarr, zarr_shape

# Pillow refuses images above ~179 megapixels as possible "decompression bombs". Whole-slide
# tiles, stitched microscopy mosaics and large EM sections routinely exceed that, and the
# files are the user's own data, so the limit is raised on purpose to 2**32 pixels
# (4 gigapixels; Pillow only errors above twice this). Memory is the real limit beyond that.
Image.MAX_IMAGE_PIXELS = 2**32

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
#: Largest image (pixels) decoded whole: PNG/JPEG/BMP, a zarr level, or one compressed TIFF
#: chunk (:mod:`biomedseg.io.slides`). 150 megapixels is ~450 MB as RGB (plus the decoder's copy).
MAX_DECODE_PIXELS = 150_000_000

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_RGB_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"}


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has an image extension or ends in ``.zarr`` (case-insensitive) and is
    not hidden (the name only: see :func:`is_image_path`)."""
    p = Path(path)
    return (p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix.lower() == ZARR_SUFFIX) and not p.name.startswith(".")


def is_image_path(path: str | os.PathLike) -> bool:
    """An image on disk: a file with an image extension, or a ``.zarr`` folder."""
    p = Path(path)
    return is_zarr(p) if p.suffix.lower() == ZARR_SUFFIX else (is_image_file(p) and p.is_file())


def _fail(path, reason: str) -> UserError:
    reason = " ".join(str(reason).split())[:200] or "unknown error"
    return UserError(f"{path}: cannot read image ({reason})")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image file"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if len(text) < 20 else text


def _sniff(path: Path) -> str:
    """Return the decoder for ``path``: ``"zarr"``, ``"tiff"``, ``"png16"`` or ``"pillow"``."""
    if is_zarr(path):
        return "zarr"
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except FileNotFoundError:
        raise _fail(path, "file not found") from None
    except IsADirectoryError:
        raise _fail(path, "is a folder") from None
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from None
    if not head:
        raise _fail(path, "file is empty")
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    # 16-bit colour PNG (colour type 2 RGB, 4 LA, 6 RGBA): Pillow would truncate to 8 bit.
    if head[:8] == _PNG_MAGIC and len(head) >= 26 and head[24] == 16 and head[25] in (2, 4, 6):
        return "png16"
    return "pillow"


def _shape_to_hw(shape: tuple[int, ...], path) -> tuple[int, int, int | None, bool]:
    """Interpret a stored array shape.

    Returns ``(H, W, C or None, planar)``: singleton axes are squeezed, ``(C, H, W)`` with
    ``C`` in {3, 4} is planar colour. Anything else that is not 2D raises ``UserError``.
    """
    dims = [s for s in shape if s != 1] if len(shape) > 2 else list(shape)
    if len(dims) < 2:
        raise _fail(path, f"array of shape {tuple(shape)} is not a 2D image")
    if len(dims) == 2:
        return dims[0], dims[1], None, False
    if len(dims) == 3:
        if dims[2] <= 4:
            return dims[0], dims[1], dims[2], False
        if dims[0] in (3, 4):
            return dims[1], dims[2], dims[0], True
        raise _fail(path, f"has {dims[0]} pages or planes of {dims[1]}x{dims[2]}; "
                          "only single 2D images are supported")
    raise _fail(path, f"is a {len(dims)}-D stack of shape {tuple(shape)}; "
                      "only single 2D images are supported")


def _to_2d(arr: np.ndarray, path) -> np.ndarray:
    """Squeeze/transpose a decoded array to ``(H, W)`` or ``(H, W, C)``, C <= 4."""
    h, w, c, planar = _shape_to_hw(arr.shape, path)
    if c is None:
        return arr.reshape(h, w)
    arr = arr.reshape((c, h, w) if planar else (h, w, c))
    return np.moveaxis(arr, 0, -1) if planar else arr


def _drop_alpha(arr: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` -> RGB, ``(H, W, 2)`` (grey + alpha) -> ``(H, W)``, ``(H, W, 1)`` -> 2D."""
    if arr.ndim == 3 and arr.shape[2] == 4:
        return arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        return arr[..., 0]
    return arr


def _apply_tiff_colormap(arr: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """Palette TIFF indices ``(H, W)`` -> ``(H, W, 3)`` using a ``(3, N)`` colormap."""
    cmap = np.asarray(colormap)
    cmap = (cmap // 257).astype(np.uint8) if cmap.max() > 255 else cmap.astype(np.uint8)
    return cmap.T[np.clip(arr, 0, cmap.shape[1] - 1)]


@contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's logged warnings about broken files; we raise one clear error."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_series(tif: tifffile.TiffFile):
    if not tif.series or not tif.pages:
        raise ValueError("no image data in the TIFF file")
    return tif.series[0]


def _decode_tiff(path: Path, expand_palette: bool) -> np.ndarray:
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = _first_series(tif)
            arr = series.asarray()
            page = series.pages[0] if series.pages else tif.pages[0]
            colormap = getattr(page, "colormap", None)
            is_palette = page.photometric == tifffile.PHOTOMETRIC.PALETTE
    except Exception as exc:  # any decoder failure is a problem with the user's file
        raise _fail(path, _reason(exc)) from None
    arr = _to_2d(np.asarray(arr), path)
    if expand_palette and is_palette and colormap is not None and arr.ndim == 2:
        arr = _apply_tiff_colormap(arr, colormap)
    return arr


def _decode_png16(path: Path) -> np.ndarray:
    import imagecodecs

    try:
        arr = imagecodecs.png_decode(path.read_bytes())
    except Exception as exc:
        raise _fail(path, _reason(exc)) from None
    return _to_2d(np.asarray(arr), path)


def _decode_pillow(path: Path, expand_palette: bool) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "1":
                im = im.convert("L")
            elif mode in ("P", "PA") and not expand_palette:
                im = im if mode == "P" else im.getchannel(0)
            elif mode in _RGB_MODES and mode != "RGB":
                im = im.convert("RGB")
            elif mode in ("LA", "La"):
                im = im.getchannel(0)
            arr = np.asarray(im)
    except Exception as exc:  # any decoder failure is a problem with the user's file
        raise _fail(path, _reason(exc)) from None
    if arr.dtype.byteorder == ">":  # "I;16B" and friends
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return _to_2d(arr, path)


def _decode(path, expand_palette: bool) -> np.ndarray:
    path = Path(path)
    kind = _sniff(path)
    if kind == "zarr":
        arr = read_zarr(path, MAX_DECODE_PIXELS)
    elif kind == "tiff":
        arr = _decode_tiff(path, expand_palette)
    elif kind == "png16":
        arr = _decode_png16(path)
    else:
        arr = _decode_pillow(path, expand_palette)
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
        raise _fail(path, f"has {arr.shape[2]} channels; 1 (grey), 3 (RGB) or 4 (RGBA) expected")
    return _drop_alpha(arr)


def _normalise_dtype(arr: np.ndarray, path) -> np.ndarray:
    """Bring pixel values to ``uint8``/``uint16``/``float32`` without losing information."""
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= 0 and hi <= 255 and arr.dtype.itemsize == 1:
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.float32)
    raise _fail(path, f"unsupported pixel type {arr.dtype}")


def read_raw(path: str | os.PathLike) -> np.ndarray:
    """Read pixel values as stored: ``(H, W)`` or ``(H, W, 3)``, any integer/float dtype.

    Alpha is dropped, palette ("P") images give their palette indices, 1-bit PNG/BMP give
    0/255 ``uint8``, boolean TIFFs 0/1 ``uint8``. Used for masks. Raises ``UserError`` when
    the file cannot be read.
    """
    arr = _decode(path, expand_palette=False)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W, C)``, ``C`` in {1, 3}, dtype ``uint8``/``uint16``/``float32``.

    RGBA -> RGB, LA -> L, palette -> RGB, 16-bit kept, multi-page ``(1, H, W)`` squeezed,
    planar ``(3|4, H, W)`` TIFF -> ``(H, W, 3)``. Raises ``UserError`` for unreadable files.
    """
    arr = _normalise_dtype(_decode(path, expand_palette=True), path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image, from its header where possible (no full decode)."""
    path = Path(path)
    kind = _sniff(path)
    if kind == "zarr":
        return zarr_shape(path)
    try:
        if kind == "tiff":
            with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
                shape = tuple(_first_series(tif).shape)
        else:
            with Image.open(path) as im:
                width, height = im.size
            shape = (height, width)
    except Exception as exc:  # any parser failure is a problem with the user's file
        raise _fail(path, _reason(exc)) from None
    h, w, _, _ = _shape_to_hw(shape, path)
    return int(h), int(w)


def is_grey_rgb(img: np.ndarray) -> bool:
    """True when ``img`` is grey: 2D, one channel, or all colour channels equal."""
    if img.ndim == 2 or img.shape[-1] == 1:
        return True
    first = img[..., 0]
    return all(np.array_equal(first, img[..., c]) for c in range(1, img.shape[-1]))


def conform_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Return ``img`` as ``(H, W, channels)``, ``channels`` in {1, 3}, same dtype.

    1 -> 3 replicates the grey channel; 3 -> 1 takes channel 0 when the image is grey stored
    as RGB, otherwise the ITU-R 601 luminance ``0.299 R + 0.587 G + 0.114 B``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.ndim == 2:
        img = img[:, :, None]
    have = img.shape[2]
    if have == channels:
        return img
    if have == 1:
        return np.repeat(img, 3, axis=2)
    if have != 3:
        raise ValueError(f"cannot convert an image with {have} channels to {channels}")
    if is_grey_rgb(img):
        return img[:, :, :1].copy()
    luma = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        luma = np.clip(np.rint(luma), info.min, info.max)
    return luma.astype(img.dtype)[:, :, None]
