"""Physical pixel size of an image, in micrometres: ``(y_um, x_um)`` or ``None`` when unknown.

:func:`pixel_size` reads it from the file, the first of

- **OME-XML** (OME-TIFF): ``Pixels`` ``PhysicalSizeY/X`` with ``PhysicalSizeY/XUnit``
  (default µm);
- **Aperio SVS**: ``MPP`` in the image description;
- **ImageJ TIFF**: ``YResolution/XResolution`` (pixels per unit) with ImageJ's ``unit``
  (``micron``, ``um``, ``nm``, ``mm`` ...);
- **TIFF resolution tags**: ``YResolution/XResolution`` with ``ResolutionUnit`` centimetre
  (or tifffile's millimetre / micrometre); inch only when it is no screen or print setting
  (a whole number of dots per inch up to ``MAX_PRINT_DPI`` -- 72, 96, 300 dpi -- says nothing
  about the specimen and is ignored);
- **OME-Zarr**: the level's ``coordinateTransformations`` ``scale`` of the ``y``/``x`` axes
  when the axes carry a ``unit``.

For a pyramid level > 0 the size is that of the level (level 0's times the downsampling).

``DATA/dataset.json`` may state it (:func:`pixel_size_from_meta`, key ``pixel_size``, in µm):
a number (square pixels) or ``[y, x]`` for every image, or an object
``{"default": ..., "<image id or file name>": ...}`` per image. A stated size wins over the
file's (:func:`resolve_pixel_size`). :func:`summarize_pixel_sizes` pools the sizes of a data
set (distinct values, median, mixed or not).

Imports nothing of the project except ``errors`` and ``io.zarr_images``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.zarr_images import is_zarr, ome_multiscales, open_level

PixelSize = tuple[float, float]

#: the ``dataset.json`` key
META_KEY = "pixel_size"
#: Inch resolutions of a whole number of dots per inch up to this are screen/print settings.
MAX_PRINT_DPI = 1200
#: Pixel sizes differing by more than this fraction are different sizes (audit: mixed sizes).
PIXEL_SIZE_TOLERANCE = 0.01

#: micrometres per unit (OME, OME-NGFF, ImageJ and TIFF unit names, lower case)
UNIT_UM = {
    "pm": 1e-6,
    "picometer": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "in": 25400.0,
    "inch": 25400.0,
}
_RESUNIT_UM = {3: 1e4, 4: 1e3, 5: 1.0}  # TIFF ResolutionUnit: centimetre, millimetre, micrometre


def _um(value, unit: str | None) -> float | None:
    """``value`` in ``unit`` (default µm) as micrometres (6 significant digits), ``None`` when
    not a positive number or the unit is unknown."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    factor = UNIT_UM.get((unit or "µm").strip().lower().replace("\u00b5", "µ"))
    if factor is None or not np.isfinite(v) or v <= 0:
        return None
    return float(f"{v * factor:.6g}")


def _pair(y: float | None, x: float | None) -> PixelSize | None:
    return (y, x) if y is not None and x is not None else None


def _from_ome_xml(xml: str) -> PixelSize | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels":
            a = el.attrib
            x = _um(a.get("PhysicalSizeX"), a.get("PhysicalSizeXUnit"))
            y = _um(a.get("PhysicalSizeY"), a.get("PhysicalSizeYUnit"))
            return _pair(y, x) or ((x, x) if x is not None and a.get("PhysicalSizeY") is None else None)
    return None


def _from_resolution(page, imagej_unit: str | None) -> PixelSize | None:
    """Pixel size from the resolution tags (pixels per unit) of a TIFF page."""
    try:
        rx, ry = (float(v) for v in page.resolution)
        unit = int(page.resolutionunit)
    except (TypeError, ValueError, AttributeError):
        return None
    if rx <= 0 or ry <= 0:
        return None
    if imagej_unit is not None and unit == 1:
        return _pair(_um(1.0 / ry, imagej_unit), _um(1.0 / rx, imagej_unit))
    if unit == 2:  # inch: a screen/print setting unless it is an odd number
        if all(float(r).is_integer() and r <= MAX_PRINT_DPI for r in (rx, ry)):
            return None
        return _pair(_um(1.0 / ry, "in"), _um(1.0 / rx, "in"))
    if unit in _RESUNIT_UM:
        return _pair(_um(_RESUNIT_UM[unit] / ry, "µm"), _um(_RESUNIT_UM[unit] / rx, "µm"))
    return None


def _tiff_pixel_size(path: Path, level: int) -> PixelSize | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tiff_pixel_size(tif, level)


def tiff_pixel_size(tif, level: int = 0) -> PixelSize | None:
    """The pixel size of ``level`` of an open ``tifffile.TiffFile`` (``None`` when it states none)."""
    if not tif.series or not tif.pages:
        return None
    levels = tif.series[0].levels
    page = tif.pages[0]
    found = None
    if tif.is_ome and tif.ome_metadata:
        found = _from_ome_xml(tif.ome_metadata)
    if found is None and tif.is_svs:
        mpp = _um((tif.svs_metadata or {}).get("MPP"), "µm")
        found = (mpp, mpp) if mpp is not None else None
    if found is None:
        unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
        found = _from_resolution(page, unit)
    if found is None or not 0 < level < len(levels):
        return found
    (h0, w0), (h, w) = (_yx(levels[0]), _yx(levels[level]))
    return float(f"{found[0] * h0 / h:.6g}"), float(f"{found[1] * w0 / w:.6g}")


def _yx(series) -> tuple[int, int]:
    axes, shape = series.axes, series.shape
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _zarr_pixel_size(path: Path, level: int) -> PixelSize | None:
    return zarr_level_pixel_size(open_level(path, level), level)


def zarr_level_pixel_size(z, level: int) -> PixelSize | None:
    """The pixel size of ``level`` of an opened zarr image (a ``ZarrLevel``), from its OME-NGFF
    ``scale`` when the axes carry units."""
    ms = ome_multiscales(z.attrs)
    if not ms or not ms.get("axes"):
        return None
    axes = [a if isinstance(a, dict) else {"name": str(a)} for a in ms["axes"]]
    scale = [1.0] * len(axes)
    transforms = list(ms["datasets"][level].get("coordinateTransformations") or [])
    for t in transforms + list(ms.get("coordinateTransformations") or []):
        if t.get("type") == "scale" and len(t.get("scale") or []) == len(axes):
            scale = [a * b for a, b in zip(scale, t["scale"])]
    named = {a.get("name", "").lower(): (s, a.get("unit")) for a, s in zip(axes, scale)}
    if "y" not in named or "x" not in named or not (named["y"][1] and named["x"][1]):
        return None
    return _pair(_um(*named["y"]), _um(*named["x"]))


def pixel_size(path: str | os.PathLike, level: int = 0) -> PixelSize | None:
    """``(y_um, x_um)`` of the image at ``path`` (pyramid ``level``) from its metadata, or
    ``None`` when the file states none (or cannot be read: reading reports that)."""
    path = Path(path)
    try:
        if is_zarr(path):
            return _zarr_pixel_size(path, level)
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_pixel_size(path, level)
    except Exception:  # noqa: BLE001 - a broken file is reported by whoever reads its pixels
        return None
    return None


def _meta_value(value, where: str) -> PixelSize:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = _um(value, "µm")
        if v is not None:
            return v, v
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        pair = _pair(*(_um(v, "µm") if not isinstance(v, bool) else None for v in value))
        if pair is not None:
            return pair
    raise UserError(f"{where}: {META_KEY} must be a positive number of micrometres or [y, x] (got {value!r})")


def pixel_size_from_meta(meta: dict | None, image_id: str | None = None, name: str | None = None) -> PixelSize | None:
    """The pixel size ``dataset.json`` states for an image (id or file name), or ``None``.
    A malformed value raises ``UserError("dataset.json: pixel_size ...")``."""
    value = (meta or {}).get(META_KEY)
    if value is None:
        return None
    if not isinstance(value, dict):
        return _meta_value(value, "dataset.json")
    for key in (image_id, name, "default"):
        if key is not None and key in value:
            return _meta_value(value[key], f"dataset.json: {META_KEY}[{key!r}]")
    return None


def resolve_pixel_size(
    path: str | os.PathLike, meta: dict | None = None, image_id: str | None = None
) -> tuple[PixelSize | None, str | None]:
    """``(pixel size, where it came from: "dataset.json" | "file" | None)`` of one image of a
    data set: ``dataset.json`` first, then the file's metadata."""
    stated = pixel_size_from_meta(meta, image_id, Path(path).name)
    if stated is not None:
        return stated, "dataset.json"
    found = pixel_size(path)
    return found, ("file" if found is not None else None)


def pixel_size_factor(reference, size) -> tuple[float, float] | None:
    """``(y, x)`` factors taking an image of pixel ``size`` to the grid of pixel ``reference``
    (``size / reference``: > 1 enlarges), or ``None`` when either is unknown or they agree within
    ``PIXEL_SIZE_TOLERANCE``."""
    if reference is None or size is None:
        return None
    fy, fx = float(size[0]) / float(reference[0]), float(size[1]) / float(reference[1])
    if abs(fy - 1) <= PIXEL_SIZE_TOLERANCE and abs(fx - 1) <= PIXEL_SIZE_TOLERANCE:
        return None
    return fy, fx


def summarize_pixel_sizes(sizes: list[PixelSize | None]) -> dict:
    """Pool the pixel sizes of a data set: ``{"known", "unknown", "values": [{"pixel_size":
    [y, x], "count"}] (most common first), "median": [y, x] | None, "mixed": bool}``; sizes
    within ``PIXEL_SIZE_TOLERANCE`` of each other are not mixed."""
    known = [tuple(s) for s in sizes if s is not None]
    values = [{"pixel_size": list(v), "count": c} for v, c in Counter(known).most_common()]
    median = [float(f"{v:.6g}") for v in np.median(np.array(known), axis=0)] if known else None
    mixed = False
    if known:
        arr = np.array(known)
        mixed = bool((arr.max(axis=0) / arr.min(axis=0) > 1 + PIXEL_SIZE_TOLERANCE).any())
    return {"known": len(known), "unknown": len(sizes) - len(known), "values": values, "median": median, "mixed": mixed}
