"""What streamed prediction reads: an image file opened once through :mod:`biomedseg.io.sources`
(the same reader and rules as ``read_image`` and ``tile``), or an in-memory array.

A source has ``shape`` ``(H, W)``, ``channels``, ``tile`` (the stored tile ``(th, tw)`` or
``None``) and returns full-width rows ``[y0, y1)`` as ``(y1 - y0, W, C)`` (``read_rows``): for a
file, image values as :func:`biomedseg.io.read_image` gives them (alpha dropped, palette TIFF
expanded to RGB); for an array, values as stored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from biomedseg.io.sources import ArraySource, ImageSource, read_head
from biomedseg.io.sources import open_source as open_image_source
from biomedseg.io.sources.tiff import is_tiff
from biomedseg.io.zarr_images import is_zarr

log = logging.getLogger("biomedseg")

__all__ = ["ArraySource", "TileSource", "open_source"]

#: the interface of a streamed source (``shape``, ``channels``, ``tile``, ``read_rows``, ``close``)
TileSource = ImageSource


def open_source(obj, level: int = 0) -> ImageSource:
    """A source for a path (TIFF, ``.zarr``, or any image ``read_image`` reads; ``level`` of a
    PNG/JPEG/BMP is ignored with a warning), a source (returned as is), a zarr or numpy array
    ``(H, W)`` / ``(H, W, C)``."""
    if isinstance(obj, ImageSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if level and not is_zarr(path) and not is_tiff(read_head(path)):
            log.warning("%s: --level %d ignored (not a pyramid TIFF or zarr)", path, level)
            level = 0
        return open_image_source(path, level)
    return ArraySource(obj)
