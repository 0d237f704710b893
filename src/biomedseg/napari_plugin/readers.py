"""napari readers of what biomedseg writes.

- a run folder (drag it onto napari): its validation images with the run's predictions beside
  each other (at most :data:`MAX_RUN_IMAGES`, predicted as ``predict`` predicts);
- a predicted mask (``predict``'s OME-TIFF / OME-Zarr next to its overlay, probabilities,
  uncertainty map or ``predictions.csv``): a Labels layer in the class colours (OME-Zarr and large
  TIFF masks opened lazily, every pyramid level). The manifest claims no ``*.png``, so that napari
  does not ask which reader to use for every PNG; ``get_reader`` also reads predicted PNG masks
  when called on one;
- ``<name>_uncertainty.tif``: an Image layer; ``.geojson``: a Shapes layer of the polygons.

Other files are left to napari's own readers (``get_reader`` returns ``None``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: validation images a dropped run folder shows (each is predicted when the folder is opened)
MAX_RUN_IMAGES = 8
#: pixels between the images of a run folder laid side by side
GAP = 16
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".zarr")
#: files ``predict`` writes next to a mask: one of them marks a file as a predicted mask
_SIBLINGS = ("{stem}_overlay.png", "{stem}_proba.tif", "{stem}_proba.zarr", "{stem}_uncertainty.tif")


def _is_run(path: Path) -> bool:
    from biomedseg.runs.layout import RunPaths

    paths = RunPaths(path)
    return paths.config.is_file() and paths.dataset.is_file()


def _is_predicted_mask(path: Path) -> bool:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    if path.suffix.lower() not in MASK_SUFFIXES or stem.endswith(("_overlay", "_proba", "_uncertainty", "_instances")):
        return False
    folder = path.parent
    return (folder / "predictions.csv").is_file() or any((folder / s.format(stem=stem)).exists() for s in _SIBLINGS)


def get_reader(path):
    """The npe2 reader hook: a reader for biomedseg outputs, ``None`` for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and p.suffix.lower() != ".zarr":
        return read_run if _is_run(p) else None
    if p.suffix.lower() == ".geojson":
        return read_geojson
    if p.name.lower().endswith(("_uncertainty.tif", "_uncertainty.tiff")):
        return read_uncertainty
    return read_mask if _is_predicted_mask(p) else None


def open_mask_levels(path) -> list:
    """A mask file as a list of pyramid levels (level 0 first): zarr arrays for OME-Zarr, large
    OME-TIFFs through tifffile's zarr view, small files read whole."""
    from biomedseg.io.mask_encoding import read_written_mask
    from biomedseg.io.zarr_images import is_zarr, open_level

    path = Path(path)
    if is_zarr(path):
        return open_level(path).arrays
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        import zarr

        with tifffile.TiffFile(path) as tf:
            levels = len(tf.series[0].levels)
        if levels > 1:
            return [zarr.open(tifffile.imread(path, aszarr=True, level=i), mode="r") for i in range(levels)]
    return [read_written_mask(path)]


def _colours(path: Path, n: int) -> tuple[list, int | None]:
    """Class colours of a mask file: its own colour table (palette PNG / TIFF), else predict's
    overlay colours for ``n`` classes; class 0 is taken as the background."""
    from biomedseg.core.render import class_colors

    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            if im.mode == "P" and im.getpalette():
                flat = im.getpalette()[: 3 * n]
                return [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)], 0
    return class_colors(max(n, 2)), 0


def read_mask(path) -> list[tuple]:
    from biomedseg.napari_plugin.layers import mask_layer

    path = Path(path[0] if isinstance(path, list) else path)
    levels = open_mask_levels(path)
    top = np.asarray(levels[-1][...])
    n = int(top[top != 255].max(initial=0)) + 1
    colours, background = _colours(path, n)
    data = levels if len(levels) > 1 else levels[0]
    name = path.name[: -len(path.suffix)]
    return [
        mask_layer(data, name, colours, background, multiscale=len(levels) > 1, metadata={"biomedseg_path": str(path)})
    ]


def read_uncertainty(path) -> list[tuple]:
    from biomedseg.napari_plugin.layers import uncertainty_layer

    path = Path(path[0] if isinstance(path, list) else path)
    levels = open_mask_levels(path)
    data = levels if len(levels) > 1 else np.asarray(levels[0], np.float32)
    return [uncertainty_layer(data, path.stem, multiscale=len(levels) > 1, metadata={"biomedseg_path": str(path)})]


def read_geojson(path) -> list[tuple]:
    from biomedseg.core.errors import UserError
    from biomedseg.napari_plugin.layers import geojson_shapes

    path = Path(path[0] if isinstance(path, list) else path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read GeoJSON ({exc})") from None
    return [geojson_shapes(doc, path.stem)]


def read_run(path) -> list[tuple]:
    """The validation images of a run folder and their predictions, side by side."""
    from biomedseg.data.splits import select_split
    from biomedseg.io.images import read_image
    from biomedseg.napari_plugin.layers import mask_layer
    from biomedseg.napari_plugin.session import layer_pixel_size, load_model, predict_array

    path = Path(path[0] if isinstance(path, list) else path)
    state = load_model(path)
    _, ids, by_id = select_split(state.loaded, None, None, None, "val")
    layers, x = [], 0
    for sample_id in ids[:MAX_RUN_IMAGES]:
        file = by_id[sample_id].image
        image = read_image(file)
        prediction = predict_array(state, image, layer_pixel_size(file))
        where = {"translate": (0, x)}
        pixels = image[:, :, 0] if image.shape[2] == 1 else image
        meta = {"biomedseg_path": str(file)}
        layers.append((pixels, {"name": sample_id, "rgb": image.shape[2] == 3, "metadata": meta, **where}, "image"))
        layers.append(
            mask_layer(
                prediction.mask,
                f"{state.name}: {sample_id}",
                state.colors,
                state.background,
                metadata={"biomedseg": "prediction"},
                **where,
            )
        )
        x += image.shape[1] + GAP
    return layers
