"""One windowed image reader: :func:`open_source` opens a file once as an :class:`ImageSource`.

Ask the source for its ``shape``, ``levels``/``level_shapes``, ``channels``, ``dtype``,
``pixel_size`` and windows (``read(y0, x0, h, w)``, ``read_rows(y0, y1)``, ``read_all()`` under
the decode cap). The decoder is chosen from the file's first bytes, not its extension:

- TIFF / BigTIFF / OME-TIFF (:mod:`~biomedseg.io.sources.tiff`): window by window, never whole
  (large compressed chunks: decoded once and cached within the cap, refused above it);
- zarr / OME-Zarr folders (:mod:`~biomedseg.io.sources.zarr_level`);
- PNG / JPEG / BMP (:mod:`~biomedseg.io.sources.whole`): decoded whole up to ``MAX_DECODE_PIXELS``,
  refused above it from the header (decompression bombs included) without touching Pillow's
  process-wide limit.

``read_image``/``read_raw``/``image_shape`` (:mod:`biomedseg.io.images`), ``tile``
(:mod:`biomedseg.data.tiling`) and streamed ``predict`` (:mod:`biomedseg.stream`) all
read through it: one set of rules. Imports nothing of the project but ``errors`` and ``io``.
"""

from __future__ import annotations

import os
from pathlib import Path

from biomedseg.io.sources.base import MAX_DECODE_PIXELS, ArraySource, ImageSource, fail
from biomedseg.io.zarr_images import is_zarr

__all__ = ["MAX_DECODE_PIXELS", "ArraySource", "ImageSource", "open_source", "read_head"]


def _open_file(path: Path):
    """``open(path, "rb")`` with the failures as one-line ``UserError``."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise fail(path, "file not found") from None
    except IsADirectoryError:
        raise fail(path, "is a folder") from None
    except OSError as exc:
        raise fail(path, exc.strerror or str(exc)) from None


def read_head(path: Path, n: int = 26) -> bytes:
    """The first ``n`` bytes of ``path`` (``UserError`` when missing, a folder, unreadable or empty)."""
    with _open_file(path) as fh:
        head = fh.read(n)
    if not head:
        raise fail(path, "file is empty")
    return head


def open_source(
    path: str | os.PathLike, level: int = 0, *, raw: bool = False, max_decode_pixels: int = MAX_DECODE_PIXELS
) -> ImageSource:
    """Open the image at ``path`` once (a context manager; nothing decoded yet).

    ``level``: pyramid level the windows come from (TIFF, OME-Zarr; ``UserError`` when absent);
    ``raw``: mask mode (values as stored, palette indices kept); ``max_decode_pixels``: the most
    pixels decoded in one piece (a whole PNG/JPEG/BMP, ``read_all``, one compressed TIFF chunk).
    The file is opened once: its first bytes choose the decoder, which reads on from the same handle.
    """
    from biomedseg.io.sources.tiff import TiffSource, is_tiff
    from biomedseg.io.sources.whole import WholeSource
    from biomedseg.io.sources.zarr_level import ZarrSource

    path = Path(path)
    if is_zarr(path):
        return ZarrSource(path, level, raw, max_decode_pixels)
    fh = _open_file(path)
    try:
        head = fh.read(26)
        if not head:
            raise fail(path, "file is empty")
        fh.seek(0)
        if is_tiff(head):
            return TiffSource(path, level, raw, max_decode_pixels, fh)
        return WholeSource(path, level, raw, max_decode_pixels, head, fh)
    except BaseException:
        fh.close()
        raise
