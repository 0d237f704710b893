"""Zarr and OME-Zarr folders read as one 2D image.

A ``.zarr`` folder is an image when it holds one array, or a group with OME-NGFF
``multiscales`` metadata (0.4: in the group's attributes; 0.5: under ``"ome"``), whose
``datasets`` are the pyramid levels (level 0 = full resolution). Axes come from the metadata
(``"yx"``, ``"cyx"``, ``"tczyx"`` ...) or are guessed from the shape: ``(H, W)``,
``(H, W, C<=4)`` or ``(C, H, W)`` after dropping singleton axes. One non-spatial axis of at
most 4 entries may remain (the channels); anything else is a stack, refused with a
``UserError``.

- :func:`is_zarr`: a ``.zarr`` folder (no file access beyond ``is_dir``).
- :func:`open_level`: the array of one level with its axes (a :class:`ZarrLevel`).
- :func:`axes_plan`: how to index an array of some axes for a 2D image (used for TIFF levels too).
- :func:`level_shape`: ``(H, W)`` of one level.

Windows and whole levels are read by :class:`biomedseg.io.sources.zarr_level.ZarrSource`.

Imports nothing of the project except ``errors``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from biomedseg.core.errors import UserError

ZARR_SUFFIX = ".zarr"


def is_zarr(path: str | os.PathLike) -> bool:
    """True for a non-hidden folder whose name ends in ``.zarr`` (case-insensitive)."""
    p = Path(path)
    return p.suffix.lower() == ZARR_SUFFIX and not p.name.startswith(".") and p.is_dir()


def ome_multiscales(attrs: dict) -> dict | None:
    """The first ``multiscales`` entry of OME-NGFF metadata (0.4 or 0.5 layout), or ``None``."""
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return ms[0] if ms else None


def _ome_axes(attrs: dict) -> tuple[list, str | None]:
    """``(dataset paths, axes letters or None)`` of OME-NGFF metadata (``([], None)`` without)."""
    ms = ome_multiscales(attrs)
    if not ms:
        return [], None
    axes = ms.get("axes")
    letters = None
    if axes:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        letters = "".join(n[0].upper() for n in names)
    return [d["path"] for d in ms.get("datasets", [])], letters


@dataclass
class ZarrLevel:
    """One level of a zarr image: ``array`` (a zarr array), ``axes`` (letters or ``None``),
    ``level``, ``n_levels``, ``attrs`` (the group's attributes, ``{}`` for a plain array) and
    ``arrays`` (every level's array, level 0 first)."""

    array: object
    axes: str | None
    level: int
    n_levels: int
    attrs: dict
    arrays: list


def open_level(path: str | os.PathLike, level: int = 0) -> ZarrLevel:
    """Open level ``level`` of the zarr image at ``path`` (``UserError`` when it cannot)."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any failure is a problem with the user's folder
        raise UserError(f"{path}: cannot open zarr ({type(exc).__name__}: {exc})") from None
    if not isinstance(node, zarr.Group):
        if level:
            raise UserError(f"{path}: --level {level}: a plain zarr array has one level")
        return ZarrLevel(node, None, 0, 1, {}, [node])
    attrs = dict(node.attrs)
    paths, axes = _ome_axes(attrs)
    if not paths:
        arrays = sorted(name for name, _ in node.arrays())
        if len(arrays) != 1:
            raise UserError(
                f"{path}: zarr group without OME multiscales metadata and {len(arrays)} arrays; pass the array itself"
            )
        paths = arrays
    if not 0 <= level < len(paths):
        raise UserError(f"{path}: --level {level} does not exist (levels 0..{len(paths) - 1})")
    try:
        arrays = [node[p] for p in paths]
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: cannot open zarr ({type(exc).__name__}: {exc})") from None
    return ZarrLevel(arrays[level], axes, level, len(paths), attrs, arrays)


def axes_plan(shape: tuple[int, ...], axes: str | None, name: str) -> tuple[list, int, int, int | None]:
    """From an array shape (and axes letters if known) build ``(index template, y_axis, x_axis,
    channel_axis)``. Singleton axes are indexed with 0; exactly one non-spatial axis may remain
    (the channels); more is a stack, which is refused."""
    nd = len(shape)
    if axes is not None and len(axes) == nd:
        axes = axes.upper()
        y_ax, x_ax = axes.rfind("Y"), axes.rfind("X")
        if y_ax < 0 or x_ax < 0:
            raise UserError(f"{name}: array axes {axes!r} have no Y/X")
    else:
        dims = [i for i, s in enumerate(shape) if s != 1]
        if nd == 2:
            y_ax, x_ax = 0, 1
        elif len(dims) == 3 and shape[dims[2]] <= 4:
            y_ax, x_ax = dims[0], dims[1]
        elif len(dims) >= 2:
            y_ax, x_ax = dims[-2], dims[-1]
        else:
            raise UserError(f"{name}: array of shape {tuple(shape)} is not a 2D image")
    others = [i for i in range(nd) if i not in (y_ax, x_ax) and shape[i] != 1]
    if len(others) > 1:
        raise UserError(f"{name}: array of shape {tuple(shape)} is a stack; only single 2D images are supported")
    c_ax = others[0] if others else None
    if c_ax is not None and shape[c_ax] > 4:
        raise UserError(f"{name}: {shape[c_ax]} channels; 1 (grey), 3 (RGB) or 4 (RGBA) expected")
    template = [slice(None) if i in (x_ax, c_ax) else 0 for i in range(nd)]
    return template, y_ax, x_ax, c_ax


def level_shape(z: ZarrLevel, index: int, name: str) -> tuple[int, int]:
    """``(H, W)`` of level ``index`` of ``z``."""
    shape = tuple(int(s) for s in z.arrays[index].shape)
    _, y, x, _ = axes_plan(shape, z.axes, name)
    return shape[y], shape[x]
