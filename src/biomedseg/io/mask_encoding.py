"""Class-index masks written back in the user's own encoding.

``--mask-format`` of ``predict``:

- ``index``: class indices ``0..K-1`` (the default: what ``evaluate``, resuming and the RLE
  writer read back, and what the masks of most training sets hold);
- ``binary``: ``0`` for the background and ``255`` for the one foreground class (2-class runs);
- ``palette``: class indices in a palette image (PNG "P" mode, TIFF colour map) whose colour
  table holds the class colours: viewers show colours, readers of indices get indices;
- ``rgb``: the class colours as ``(H, W, 3)`` RGB;
- ``auto``: the encoding of the run's training masks (its :class:`~biomedseg.io.masks.Palette`):
  class indices, grey levels (``0/255``, ``0/128/255``, 16-bit values) or RGB colours.

The class colours are the run's palette when its masks were colour masks, else colours the
caller chooses (``predict`` uses :func:`biomedseg.core.render.class_colors`). Every encoding reads
back to the same class indices with :func:`~biomedseg.io.masks.read_mask` and
:meth:`MaskEncoding.read_palette`, so no encoding loses a class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.images import read_raw
from biomedseg.io.masks import Palette, read_mask
from biomedseg.io.writers import TILE_PIXELS, atomic_path, write_png, write_tiff

__all__ = [
    "DEFAULT_MASK_FORMAT",
    "MASK_FORMATS",
    "MaskEncoding",
    "encode_mask",
    "read_written_mask",
    "resolve_encoding",
    "write_mask",
]

MASK_FORMATS = ("index", "binary", "palette", "rgb", "auto")
#: class indices: what evaluate, resumed runs and the RLE writer read back (see module docstring)
DEFAULT_MASK_FORMAT = "index"


@dataclass(frozen=True)
class MaskEncoding:
    """How class ``i`` is stored: ``values[i]`` (a grey level, or an RGB colour for ``rgb``).

    ``kind``: ``index``, ``binary``, ``levels`` (grey levels of ``auto``), ``palette`` or ``rgb``;
    ``colors``: the RGB colour of each class (the colour table of ``palette``).
    """

    kind: str
    values: np.ndarray
    colors: tuple[tuple[int, int, int], ...]

    @property
    def one_channel(self) -> bool:
        """True when the stored values are one 8-bit channel (what every output format holds)."""
        return self.kind in ("index", "binary", "levels") and int(self.values.max()) <= 255

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """``(H, W)`` class indices -> stored values: ``(H, W)`` uint8/uint16 or ``(H, W, 3)`` uint8
        (``palette``: the indices themselves)."""
        if self.kind in ("index", "palette"):
            return mask
        return self.values[np.asarray(mask, np.intp)]

    def read_palette(self) -> Palette:
        """The palette that reads a written mask back to class indices (``read_mask``)."""
        if self.kind == "palette":  # read_raw gives a palette image's indices
            return Palette.identity(len(self.values))
        return Palette([tuple(np.atleast_1d(v).tolist()) for v in self.values])

    def with_one_channel(self) -> "MaskEncoding":
        """This encoding where one 8-bit channel can hold it, else class indices."""
        return self if self.one_channel else index_encoding(len(self.values), self.colors)


def index_encoding(n_classes: int, colors: Sequence) -> MaskEncoding:
    """Class indices ``0..K-1``."""
    return MaskEncoding("index", np.arange(n_classes, dtype=np.uint8), tuple(map(tuple, colors)))


def resolve_encoding(
    fmt: str, palette: Palette, background: int | None, colors: Sequence[tuple[int, int, int]]
) -> MaskEncoding:
    """The :class:`MaskEncoding` of ``--mask-format fmt`` for a run whose training masks had
    ``palette``; ``colors``: RGB per class where the palette has no colours. ``UserError``
    for an unknown format or ``binary`` with more than two classes."""
    k = palette.n_classes
    if fmt not in MASK_FORMATS:
        raise UserError(f"--mask-format {fmt}: choose one of {', '.join(MASK_FORMATS)}")
    colors = tuple(tuple(int(v) for v in c) for c in (palette.values if palette.channels == 3 else colors))
    if len(colors) != k:
        raise ValueError(f"{len(colors)} colours for {k} classes")
    if fmt == "auto":
        if palette.channels == 3:
            fmt = "rgb"
        elif palette.is_identity:
            fmt = "index"
        else:
            grey = np.array([v[0] for v in palette.values])
            return MaskEncoding("levels", grey.astype(np.uint8 if grey.max() <= 255 else np.uint16), colors)
    if fmt == "binary":
        if k != 2:
            raise UserError(
                f"--mask-format binary: the run has {k} classes; 0/255 masks hold one foreground "
                "class (use index, palette or rgb)"
            )
        values = np.full(2, 255, np.uint8)
        values[background or 0] = 0
        return MaskEncoding("binary", values, colors)
    if fmt in ("rgb", "palette"):
        return MaskEncoding(fmt, np.array(colors, np.uint8), colors)
    return index_encoding(k, colors)


def encode_mask(
    mask: np.ndarray,
    palette: Palette,
    fmt: str,
    background: int | None = 0,
    colors: Sequence[tuple[int, int, int]] | None = None,
):
    """``(H, W)`` class indices in the encoding ``fmt``: an array, or for ``palette`` a PIL
    "P" image with the class colours (``colors``: RGB per class where ``palette`` has no
    colours; default its grey levels as grey colours)."""
    if colors is None:
        colors = [tuple(v) * 3 if len(v) == 1 else v for v in palette.values]
    enc = resolve_encoding(fmt, palette, background, colors)
    return _palette_image(mask, enc.colors) if enc.kind == "palette" else enc.encode(mask)


def _palette_image(mask: np.ndarray, colors) -> "object":
    from PIL import Image

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette([v for c in colors for v in c], rawmode="RGB")
    return image


def write_mask(path: str | os.PathLike, mask: np.ndarray, encoding: MaskEncoding) -> None:
    """Write ``(H, W)`` class indices in ``encoding`` as PNG or TIFF (by the suffix), atomically.
    ``palette`` masks get the class colours as the PNG palette or the TIFF colour map."""
    tiff = str(path).lower().endswith((".tif", ".tiff"))
    if encoding.kind != "palette":
        (write_tiff if tiff else write_png)(path, encoding.encode(mask))
        return
    if not tiff:
        with atomic_path(path) as tmp:
            _palette_image(mask, encoding.colors).save(tmp, format="PNG")
        return
    import tifffile

    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, : len(encoding.colors)] = np.array(encoding.colors, np.uint16).T * 257
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            np.ascontiguousarray(mask, np.uint8),
            photometric="palette",
            colormap=colormap,
            compression="zlib",
            metadata=None,
            tile=(256, 256) if mask.size > TILE_PIXELS else None,
        )


def read_written_mask(path: str | os.PathLike, encoding: MaskEncoding | None = None) -> np.ndarray:
    """The ``(H, W)`` class indices of a mask written by :func:`write_mask` in ``encoding``
    (``None``: class indices, read as stored)."""
    if encoding is None or encoding.kind == "index":
        return read_raw(path)
    return read_mask(path, encoding.read_palette())[0]
