"""``predict``'s masks in the user's encoding (``--mask-format``) and as GeoJSON (``--geojson``).

The conversions live in :mod:`biomedseg.io.mask_encoding` and :mod:`biomedseg.vector.geojson`; this
module applies them with a run's classes, palette and colours:

- the class colours are the run's palette when its training masks were colour masks, else
  :func:`biomedseg.core.render.class_colors` (background black);
- masks that must be one 8-bit channel (OME-Zarr outputs, streamed huge images: tiled TIFF or
  OME-Zarr written strip by strip) keep ``index``/``binary``/grey levels; ``rgb`` and
  ``palette`` are written there as class indices (logged once per image);
- GeoJSON features are the foreground classes (every class but the run's background), in
  full-resolution pixels: a mask predicted on pyramid level ``L`` is scaled by the level's
  downsampling.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from biomedseg.io.mask_encoding import DEFAULT_MASK_FORMAT, MaskEncoding, resolve_encoding
from biomedseg.io.masks import Palette
from biomedseg.vector.geojson import DEFAULT_OBJECT_TYPE, GeoJSONMaskWriter, check_object_type, write_mask_geojson

log = logging.getLogger("biomedseg")

__all__ = [
    "DEFAULT_MASK_FORMAT",
    "class_colors_of",
    "geojson_classes",
    "geojson_object_type",
    "level_scale",
    "mask_encoding_for",
    "one_channel",
    "streamed_extras",
    "write_geojson",
]


def class_colors_of(run) -> list[tuple[int, int, int]]:
    """RGB per class of a loaded run: its palette's colours, else the overlay colours."""
    from biomedseg.core.render import class_colors

    palette = Palette.from_json(run.info.palette)
    if palette.channels == 3:
        return [tuple(v) for v in palette.values]
    return class_colors(len(run.classes))


def mask_encoding_for(run, fmt: str | None) -> MaskEncoding:
    """The :class:`~biomedseg.io.mask_encoding.MaskEncoding` of ``--mask-format fmt`` for ``run``."""
    return resolve_encoding(
        fmt or DEFAULT_MASK_FORMAT, Palette.from_json(run.info.palette), run.background, class_colors_of(run)
    )


def one_channel(encoding: MaskEncoding, where, why: str) -> MaskEncoding:
    """``encoding`` where one 8-bit channel holds it, else class indices (logged)."""
    if not encoding.one_channel:
        log.warning(
            "%s: %s masks hold one 8-bit value per pixel: class indices written instead of %s",
            where,
            why,
            encoding.kind,
        )
    return encoding.with_one_channel()


def geojson_object_type(geojson: bool | str | None) -> str | None:
    """``predict(geojson=...)``: ``False``/``None`` -> no GeoJSON, ``True`` -> the default
    object type, else ``"annotation"`` or ``"detection"``."""
    if not geojson:
        return None
    return DEFAULT_OBJECT_TYPE if geojson is True else check_object_type(str(geojson))


def geojson_classes(run) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """``{class index: (name, colour)}`` of the classes written to GeoJSON (not the background)."""
    colors = class_colors_of(run)
    return {c: (name, colors[c]) for c, name in enumerate(run.classes) if c != run.background}


def write_geojson(path: Path, mask: np.ndarray, run, object_type: str) -> Path:
    """``<stem>.geojson`` of an in-memory mask."""
    return write_mask_geojson(path, mask, geojson_classes(run), object_type)


def level_scale(src) -> tuple[float, float]:
    """``(sx, sy)`` from pixels of the source's pyramid level to level 0 (its header: nothing read)."""
    fy, fx = src.downsample
    return fx, fy


class StreamExtras(NamedTuple):
    """What a streamed prediction writes besides the class indices: ``encoder`` (class indices ->
    stored values, ``None`` for indices) and ``sink`` (a GeoJSON writer fed band by band, or ``None``)."""

    encoder: Callable[[np.ndarray], np.ndarray] | None
    sink: GeoJSONMaskWriter | None


@contextmanager
def streamed_extras(
    run, path: Path, geojson_path: Path, src, level: int, encoding: MaskEncoding, object_type: str | None
):
    """Yield the :class:`StreamExtras` of one streamed image, for
    :meth:`~biomedseg.stream.predictor.StreamingPredictor.predict_to_files` (``mask_encoder``,
    ``mask_sink``); the GeoJSON's temporary file is removed on failure."""
    enc = one_channel(encoding, path, "streamed (large input)")
    encoder = None if enc.kind == "index" else enc.encode
    if object_type is None:
        yield StreamExtras(encoder, None)
        return
    scale = level_scale(src)
    with GeoJSONMaskWriter(geojson_path, src.shape[1], geojson_classes(run), object_type, scale) as sink:
        yield StreamExtras(encoder, sink)
