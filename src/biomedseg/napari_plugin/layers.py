"""napari layers of biomedseg's outputs: class masks as Labels in the run's colours, uncertainty as
an Image, GeoJSON as Shapes. Plain ``(data, kwargs, type)`` tuples, as napari readers return them."""

from __future__ import annotations

import numpy as np

from biomedseg.core.labels import IGNORE_INDEX


def labels_colormap(colors, background: int | None):
    """A napari ``DirectLabelColormap``: class ``i`` in ``colors[i]`` (RGB 0..255), the background
    class and unlabelled pixels (255) transparent, so the image shows through."""
    from napari.utils.colormaps import DirectLabelColormap

    table = {None: np.zeros(4, np.float32)}
    for i, rgb in enumerate(colors):
        alpha = 0.0 if i == background else 1.0
        table[i] = np.array([*(np.asarray(rgb, np.float32) / 255.0), alpha], np.float32)
    table[IGNORE_INDEX] = np.zeros(4, np.float32)
    return DirectLabelColormap(color_dict=table)


def mask_layer(mask, name: str, colors, background: int | None, **extra) -> tuple:
    """A Labels layer tuple of a class-index mask (``extra``: napari layer keywords)."""
    kwargs = {"name": name, "colormap": labels_colormap(colors, background), "opacity": 0.6, **extra}
    return (mask, kwargs, "labels")


def uncertainty_layer(uncertainty, name: str, **extra) -> tuple:
    """An Image layer tuple of a per-pixel uncertainty map (0 sure .. 1 uniform), hot colours."""
    data = np.asarray(uncertainty, np.float32) if not isinstance(uncertainty, list) else uncertainty
    kwargs = {"name": name, "colormap": "inferno", "contrast_limits": (0.0, 1.0), "blending": "additive", **extra}
    kwargs.setdefault("opacity", 0.7)
    return (data, kwargs, "image")


def add_tuple(viewer, layer: tuple, replace: bool = True):
    """Add a layer tuple to ``viewer``; a layer of the same name is replaced (predicting again
    updates the layer instead of piling up copies)."""
    data, kwargs, kind = layer
    name = kwargs.get("name")
    if replace and name in viewer.layers:
        viewer.layers.remove(name)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def _rings(geometry: dict) -> list[list]:
    if geometry.get("type") == "Polygon":
        return [geometry["coordinates"][0]] if geometry.get("coordinates") else []
    if geometry.get("type") == "MultiPolygon":
        return [poly[0] for poly in geometry.get("coordinates", []) if poly]
    return []


def geojson_shapes(doc: dict, name: str) -> tuple:
    """A Shapes layer tuple of the polygons of a GeoJSON FeatureCollection (outer rings; each
    feature's QuPath classification name and colour)."""
    features = doc.get("features", []) if doc.get("type") == "FeatureCollection" else [doc]
    polygons, names, colours = [], [], []
    for feature in features:
        cls = (feature.get("properties") or {}).get("classification") or {}
        rgb = cls.get("color") or cls.get("colorRGB") or [255, 255, 0]
        if isinstance(rgb, int):
            rgb = [(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255]
        for ring in _rings(feature.get("geometry") or {}):
            xy = np.asarray(ring, np.float64)
            if len(xy) >= 3:
                polygons.append(xy[:, ::-1])  # napari: (row, column)
                names.append(str(cls.get("name", "")))
                colours.append([*(np.asarray(rgb[:3], np.float32) / 255.0), 1.0])
    kwargs = {
        "name": name,
        "shape_type": "polygon",
        "edge_color": colours or "yellow",
        "face_color": "transparent",
        "edge_width": 1.0,
        "properties": {"class": names},
    }
    return (polygons, kwargs, "shapes")
