"""Reading 2D images from disk: whole images and masks, through :mod:`biomedseg.io.sources`.

Every format rule (decoder chosen from the file's first bytes; TIFF, BigTIFF, OME-TIFF, zarr /
OME-Zarr, PNG incl. 16-bit colour, JPEG, BMP; alpha, palettes, dtypes; the decode cap
``MAX_DECODE_PIXELS``) lives in :mod:`biomedseg.io.sources`; this module reads a whole image
with it. Pillow's process-wide ``PIL.Image.MAX_IMAGE_PIXELS`` is left as the user has it: the
size is read from the header and images above the cap are refused before decoding.

Conventions (see ``docs/design.md``):

- :func:`read_image` returns ``(H, W, C)`` with ``C`` in {1, 3}; dtype ``uint8`` or
  ``uint16`` (float TIFFs become ``float32``). Alpha is dropped, palette images are expanded
  to RGB.
- :func:`read_raw` returns the pixel values as stored, ``(H, W)`` or ``(H, W, 3)``, with
  alpha dropped but palette indices kept (used for masks).
- Every failure to read a file raises ``UserError("<path>: cannot read image (<reason>)")``;
  an image above the cap ``UserError("<path>: is WxH (N megapixels), above ...; <what to do>")``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from biomedseg.io.sources import MAX_DECODE_PIXELS, open_source  # noqa: F401  (MAX_DECODE_PIXELS re-exported)
from biomedseg.io.zarr_images import ZARR_SUFFIX, is_zarr

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has an image extension or ends in ``.zarr`` (case-insensitive) and is
    not hidden (the name only: see :func:`is_image_path`)."""
    p = Path(path)
    return (p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix.lower() == ZARR_SUFFIX) and not p.name.startswith(".")


def is_image_path(path: str | os.PathLike) -> bool:
    """An image on disk: a file with an image extension, or a ``.zarr`` folder."""
    p = Path(path)
    return is_zarr(p) if p.suffix.lower() == ZARR_SUFFIX else (is_image_file(p) and p.is_file())


def read_raw(path: str | os.PathLike) -> np.ndarray:
    """Read pixel values as stored: ``(H, W)`` or ``(H, W, 3)``, any integer/float dtype.

    Alpha is dropped, palette ("P") images give their palette indices, 1-bit PNG/BMP give
    0/255 ``uint8``, boolean TIFFs 0/1 ``uint8``. Used for masks. Raises ``UserError`` when
    the file cannot be read.
    """
    with open_source(path, raw=True) as src:
        return src.read_all()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W, C)``, ``C`` in {1, 3}, dtype ``uint8``/``uint16``/``float32``.

    RGBA -> RGB, LA -> L, palette -> RGB, 16-bit kept, multi-page ``(1, H, W)`` squeezed,
    planar ``(3|4, H, W)`` TIFF -> ``(H, W, 3)``. Raises ``UserError`` for unreadable files.
    """
    with open_source(path) as src:
        return src.read_all()


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image from its header (nothing decoded; no size limit)."""
    with open_source(path) as src:
        return src.shape


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
