"""GeoJSON outputs of class masks, in the convention QuPath imports.

One ``FeatureCollection`` per image; one ``Feature`` per 4-connected region of a class (see
:mod:`biomedseg.vector.polygons`: rings along pixel edges, holes kept), with
``properties = {"objectType": "annotation" | "detection", "classification": {"name": class name,
"color": [r, g, b]}}``. Coordinates are pixels of the full-resolution image (``x`` right,
``y`` down, origin at the top-left corner of the first pixel); a mask predicted on a pyramid
level is scaled up by the level's downsampling (``scale``).

:class:`GeoJSONMaskWriter` takes the mask band by band (streamed prediction) and writes each
feature as soon as its polygon is complete, into a hidden temporary file renamed to the final
name by :meth:`~GeoJSONMaskWriter.finish` (removed if the writer is left by an exception).
:func:`write_mask_geojson` writes a whole mask.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.writers import atomic_path
from biomedseg.vector.polygons import PolygonTracer

__all__ = ["DEFAULT_OBJECT_TYPE", "OBJECT_TYPES", "GeoJSONMaskWriter", "write_mask_geojson"]

OBJECT_TYPES = ("annotation", "detection")
#: QuPath object type of the features: annotations can be edited and measured in QuPath
DEFAULT_OBJECT_TYPE = "annotation"


def check_object_type(object_type: str) -> str:
    if object_type not in OBJECT_TYPES:
        raise UserError(f"--geojson-objects {object_type}: choose one of {', '.join(OBJECT_TYPES)}")
    return object_type


def _ring(coords: np.ndarray, scale: tuple[float, float]) -> list:
    """Closed GeoJSON ring (first vertex repeated); integers at scale 1."""
    if scale != (1.0, 1.0):
        coords = np.round(coords * np.array(scale), 3)
    ring = coords.tolist()
    ring.append(ring[0])
    return ring


def polygon_feature(
    shell: np.ndarray,
    holes: list[np.ndarray],
    name: str,
    color: Sequence[int],
    object_type: str = DEFAULT_OBJECT_TYPE,
    scale: tuple[float, float] = (1.0, 1.0),
) -> dict:
    """A GeoJSON ``Feature`` (QuPath properties) of one polygon ``(shell, holes)``."""
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [_ring(r, scale) for r in (shell, *holes)]},
        "properties": {"objectType": object_type, "classification": {"name": name, "color": [int(v) for v in color]}},
    }


class GeoJSONMaskWriter:
    """Write the polygons of a class-index mask given band by band as a GeoJSON file.

    Args:
        path: the ``.geojson`` file.
        width: mask width.
        classes: ``{class index: (name, (r, g, b))}`` of the classes to write (not the background).
        object_type: ``"annotation"`` or ``"detection"``.
        scale: ``(sx, sy)`` from mask pixels to full-resolution pixels.

    Use as a context manager: :meth:`add_rows` top to bottom, then :meth:`finish`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        classes: dict[int, tuple[str, Sequence[int]]],
        object_type: str = DEFAULT_OBJECT_TYPE,
        scale: tuple[float, float] = (1.0, 1.0),
    ):
        self.path = Path(path)
        self.classes = classes
        self.object_type = check_object_type(object_type)
        self.scale = (float(scale[0]), float(scale[1]))
        self.n_features = 0
        self._stack = ExitStack()
        self._fh = None
        self._tracer = PolygonTracer(width, sorted(classes), self._write)

    def __enter__(self) -> "GeoJSONMaskWriter":
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._fh = self._stack.enter_context(open(tmp, "w", encoding="utf-8", newline="\n"))
        self._fh.write('{"type": "FeatureCollection", "features": [')
        return self

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)

    def _write(self, c: int, shell: np.ndarray, holes: list[np.ndarray]) -> None:
        name, color = self.classes[c]
        feature = polygon_feature(shell, holes, name, color, self.object_type, self.scale)
        self._fh.write(("\n" if self.n_features == 0 else ",\n") + json.dumps(feature, separators=(",", ":")))
        self.n_features += 1

    def add_rows(self, y0: int, rows: np.ndarray) -> None:
        """The next rows ``(n, W)`` of the class-index mask, from row ``y0``."""
        self._tracer.add_rows(y0, rows)

    def finish(self) -> None:
        """Write the remaining polygons and rename the file to its final name."""
        self._tracer.finish()
        self._fh.write("\n]}\n")
        self._stack.close()


def write_mask_geojson(
    path: str | os.PathLike,
    mask: np.ndarray,
    classes: dict[int, tuple[str, Sequence[int]]],
    object_type: str = DEFAULT_OBJECT_TYPE,
    scale: tuple[float, float] = (1.0, 1.0),
) -> Path:
    """Write the polygons of the ``(H, W)`` class-index ``mask`` (see :class:`GeoJSONMaskWriter`)."""
    with GeoJSONMaskWriter(path, mask.shape[1], classes, object_type, scale) as writer:
        writer.add_rows(0, mask)
        writer.finish()
    return writer.path
