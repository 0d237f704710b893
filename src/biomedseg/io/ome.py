"""OME outputs: OME-TIFF with the physical pixel size and tiled sub-resolution pyramids, and the
OME-NGFF metadata of multiscale OME-Zarr outputs.

- :func:`pyramid_shapes`: the levels of an output: level 0 alone up to ``PYRAMID_ABOVE_PIXELS``
  pixels; above, levels halving the size (``ceil``) until the longer side is at most
  ``PYRAMID_TOP_SIDE`` (at least one sub-resolution). Level ``i`` is level 0 sampled at every
  ``2**i``-th row and column (nearest neighbour: class indices stay class indices).
- :func:`level_rows`: the rows of a level that a block of level-0 rows holds (streamed writers
  downsample each band as it goes).
- :func:`write_ome_levels`: an OME-TIFF (``ome=True``) whose level 0 carries the OME-XML
  ``PhysicalSizeY/X`` (µm) and the resolution tags (pixels per centimetre), and whose
  sub-resolutions are tiled SubIFDs, as QuPath, napari and Bio-Formats read pyramids; each level
  may be an array or an iterator of tiles (bounded memory). :func:`write_ome_tiff` writes an
  in-memory array that way, atomically.
- :func:`ngff_multiscales`: OME-NGFF 0.4 ``multiscales`` metadata (zarr format 2) with a
  ``scale`` coordinate transformation per level (µm when the pixel size is known).

Imports nothing of the project except ``io.writers``.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Iterator

import numpy as np

from biomedseg.io.writers import BIGTIFF_BYTES, TILE_PIXELS, atomic_path

#: Outputs with more pixels than this get sub-resolution levels.
PYRAMID_ABOVE_PIXELS = 4096 * 4096
#: Sub-resolutions halve the size until the longer side is at most this.
PYRAMID_TOP_SIDE = 512
#: Tile side of tiled outputs written from memory (multiple of 16).
OME_TILE = 256
NGFF_VERSION = "0.4"

PixelSize = tuple[float, float]


def pyramid_shapes(shape: tuple[int, int], above: int | None = None) -> list[tuple[int, int]]:
    """``[(H, W) of level 0, level 1, ...]``; ``above``: pixel threshold (default
    ``PYRAMID_ABOVE_PIXELS``) above which sub-resolutions are made."""
    h, w = int(shape[0]), int(shape[1])
    above = PYRAMID_ABOVE_PIXELS if above is None else int(above)
    shapes = [(h, w)]
    if h * w <= above:
        return shapes
    while len(shapes) == 1 or max(shapes[-1]) > PYRAMID_TOP_SIDE:
        f = 2 ** len(shapes)
        shapes.append((math.ceil(h / f), math.ceil(w / f)))
        if shapes[-1] == (1, 1):
            break
    return shapes


def level_rows(y0: int, block: np.ndarray, factor: int) -> tuple[int, np.ndarray]:
    """``(first row in the level, rows (..., n, W'))`` of a level ``factor`` times smaller that the
    level-0 rows ``[y0, y0 + block.shape[-2])`` hold (every ``factor``-th row and column)."""
    r0 = (-int(y0)) % factor
    return (int(y0) + r0) // factor, block[..., r0::factor, ::factor]


def array_tiles(array, tile: int) -> Iterator[np.ndarray]:
    """``(tile, tile)`` tiles of ``array`` (``(..., H, W)``: numpy or zarr), row-major per plane,
    planes in order, read one full-width strip at a time."""
    shape = tuple(int(s) for s in array.shape)
    h, w = shape[-2:]
    for lead in np.ndindex(*shape[:-2]):
        for y in range(0, h, tile):
            strip = np.asarray(array[lead + (slice(y, y + tile), slice(None))])
            for x in range(0, w, tile):
                yield np.ascontiguousarray(strip[:, x : x + tile])


def _ome_metadata(axes: str, pixel_size: PixelSize | None) -> dict:
    meta: dict = {"axes": axes}
    if pixel_size is not None:
        meta.update(
            PhysicalSizeY=float(pixel_size[0]),
            PhysicalSizeYUnit="µm",
            PhysicalSizeX=float(pixel_size[1]),
            PhysicalSizeXUnit="µm",
        )
    return meta


def _resolution(pixel_size: PixelSize | None, factor: int) -> dict:
    """TIFF resolution tags (pixels per centimetre) of a level ``factor`` times smaller."""
    if pixel_size is None:
        return {}
    return {
        "resolution": (1e4 / (pixel_size[1] * factor), 1e4 / (pixel_size[0] * factor)),
        "resolutionunit": "CENTIMETER",
    }


def write_ome_levels(
    path: str | os.PathLike,
    levels: list[tuple[tuple[int, ...], Iterable | np.ndarray]],
    *,
    dtype,
    axes: str,
    tile: int | None,
    pixel_size: PixelSize | None = None,
    compression: str | None = "zlib",
    bigtiff: bool = False,
) -> None:
    """Write an OME-TIFF at ``path`` (not atomically) from ``levels``: ``[(shape, data)]``, level 0
    first, ``data`` an array or an iterator of ``(tile, tile)`` tiles (then ``tile`` is needed).
    ``axes``: ``"YX"``, ``"CYX"`` (one page per channel) or ``"YXS"`` (RGB)."""
    import tifffile

    photometric = "rgb" if axes.endswith("S") else "minisblack"
    ome = np.dtype(dtype) != np.float16  # OME-XML has no half-float pixel type
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=ome) as tw:
        for i, (shape, data) in enumerate(levels):
            kw = dict(
                dtype=np.dtype(dtype),
                compression=compression,
                photometric=photometric,
                tile=(tile, tile) if tile else None,
                **_resolution(pixel_size, 2**i),
            )
            if not isinstance(data, np.ndarray):
                kw.update(shape=tuple(shape), maxworkers=1)  # tiles pulled one at a time
            if i == 0:
                tw.write(data, subifds=len(levels) - 1, metadata=_ome_metadata(axes, pixel_size) if ome else None, **kw)
            else:
                tw.write(data, subfiletype=1, **kw)


def write_ome_tiff(
    path: str | os.PathLike,
    array: np.ndarray,
    pixel_size: PixelSize | None = None,
    axes: str | None = None,
    compression: str | None = "zlib",
    pyramid_above: int | None = None,
) -> None:
    """Write an in-memory ``(H, W)``, ``(K, H, W)`` (axes ``"CYX"``) or ``(H, W, 3)`` (pass
    ``axes="YXS"``) array as an OME-TIFF, atomically; tiled (``OME_TILE``) above ``TILE_PIXELS``
    pixels or with sub-resolutions (above ``pyramid_above``, see :func:`pyramid_shapes`)."""
    arr = np.ascontiguousarray(array)
    axes = axes or ("YX" if arr.ndim == 2 else "CYX")
    if len(axes) != arr.ndim or not axes.replace("S", "").endswith("YX"):
        raise ValueError(f"write_ome_tiff: axes {axes!r} do not fit an array of shape {arr.shape}")
    yx = arr.shape[:2] if axes == "YXS" else arr.shape[-2:]
    shapes = pyramid_shapes(yx, pyramid_above)
    tile = OME_TILE if len(shapes) > 1 or yx[0] * yx[1] > TILE_PIXELS else None
    levels = []
    for i, _ in enumerate(shapes):
        f = 2**i
        level = arr[::f, ::f] if axes == "YXS" else arr[..., ::f, ::f]
        levels.append((level.shape, np.ascontiguousarray(level)))
    with atomic_path(path) as tmp:
        write_ome_levels(
            tmp,
            levels,
            dtype=arr.dtype,
            axes=axes,
            tile=tile,
            pixel_size=pixel_size,
            compression=compression,
            bigtiff=arr.nbytes > BIGTIFF_BYTES,
        )


def ngff_multiscales(name: str, axes: str, n_levels: int, pixel_size: PixelSize | None = None) -> list[dict]:
    """OME-NGFF 0.4 ``multiscales`` of an image with axes ``axes`` (``"yx"``, ``"cyx"``) and
    ``n_levels`` levels named ``"0"``, ``"1"``, ... each half the size of the one before; the
    ``y``/``x`` scale is the pixel size in micrometres (unit scale without one)."""
    kinds = {"c": "channel", "y": "space", "x": "space"}
    spacing = {"y": pixel_size[0], "x": pixel_size[1]} if pixel_size is not None else {"y": 1.0, "x": 1.0}
    out_axes = []
    for a in axes:
        entry = {"name": a, "type": kinds[a]}
        if a in "yx" and pixel_size is not None:
            entry["unit"] = "micrometer"
        out_axes.append(entry)
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [
                {"type": "scale", "scale": [float(spacing[a]) * 2**i if a in "yx" else 1.0 for a in axes]}
            ],
        }
        for i in range(n_levels)
    ]
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": out_axes,
            "datasets": datasets,
            "type": "nearest",
            "metadata": {"method": "every 2nd row and column (nearest neighbour)"},
        }
    ]
