"""Cut large images and their masks into aligned patches: a training DATA folder from slides.

``tile_dataset(SRC, OUT, size=512)`` writes ``OUT/images/<tile>.png``, ``OUT/masks/<tile>.png``
(class indices, uint8), ``OUT/tiles.csv`` (provenance) and ``OUT/dataset.json``.

Geometry. Windows are ``size`` x ``size`` every ``stride`` pixels (default: ``size``, no
overlap), always *inside* the image: when the image side is not a multiple of the stride, the
last window of a row/column is aligned to the border (it overlaps its neighbour) instead of
being padded, so every pixel of every tile is real data and a tile is never smaller than
``size`` unless the image itself is (then the tile is the whole side). Image and mask tiles
always come from the same window. Reassembling tiles at their ``(x, y)`` reproduces the
source exactly (overlaps hold identical pixels).

Provenance. ``tiles.csv`` has one row per written tile: ``tile_id, source_image,
source_mask, x, y, w, h, level, downsample_y, downsample_x, empty``; ``x, y, w, h`` are in
pixels of the tiled ``level`` (level-0 pixels = value x downsample), so a prediction of a tile
maps back to the source.

Selection. A tile whose mask is background only is *empty*; a random ``keep_empty`` fraction
of the empty tiles is kept (exactly ``round(keep_empty * n_empty)``, chosen with
``numpy.random.default_rng(seed)``; the seed is recorded in ``dataset.json``). With
``tissue_threshold`` set, empty tiles with less than that fraction of tissue pixels are
dropped first as blank slide background (tissue: colour saturation (max-min)/max >= 0.07
for RGB; for grey images darker than 85% of the type's range, i.e. stained tissue on a bright
background). Tiles with labelled pixels are always kept.

Memory. Images are read band by band (one row of windows, full width or in column chunks of
at most ``BAND_BYTES``) through :func:`biomedseg.io.sources.open_source`: tiled TIFF/BigTIFF/
OME-TIFF are never decoded whole; PNG/JPEG above ``max_decode_pixels`` are refused.
Masks: values are mapped to class indices per window with the palette of the data set

Modules: :mod:`~biomedseg.data.tiling.sources` (what to tile),
:mod:`~biomedseg.data.tiling.reading` (window origins, band reading, mask windows, palette),
:mod:`~biomedseg.data.tiling.planning` (empty/blank windows and their selection),
:mod:`~biomedseg.data.tiling.writing` (tiles, ``tiles.csv``, ``dataset.json``); this module
checks the arguments and runs them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from biomedseg.core.errors import UserError
from biomedseg.data.mask_values import MaskConverter
from biomedseg.data.tiling.planning import (
    TISSUE_GREY,
    TISSUE_SATURATION,
    TileOptions,
    TileWindow,
    plan_windows,
    select_windows,
    tissue_fraction,
)
from biomedseg.data.tiling.reading import BAND_BYTES, PALETTE_WINDOWS, mask_palette, window_starts
from biomedseg.data.tiling.sources import Source, find_sources
from biomedseg.data.tiling.writing import TileSummary, write_tiles, write_tiles_csv, write_tiles_meta
from biomedseg.io.masks import Palette
from biomedseg.io.sources import MAX_DECODE_PIXELS

__all__ = [
    "BAND_BYTES",
    "PALETTE_WINDOWS",
    "TISSUE_GREY",
    "TISSUE_SATURATION",
    "Source",
    "TileSummary",
    "tile_dataset",
    "tissue_fraction",
    "window_starts",
]

log = logging.getLogger("biomedseg")


def _check_arguments(size: int, stride: int, keep_empty: float, tissue_threshold: float | None) -> None:
    if size < 16:
        raise UserError(f"size: must be at least 16 pixels (got {size})")
    if not 0 < stride <= size:
        raise UserError(f"stride: must be between 1 and the tile size {size} (got {stride})")
    if not 0.0 <= keep_empty <= 1.0:
        raise UserError(f"keep_empty: must be between 0 and 1 (got {keep_empty})")
    if tissue_threshold is not None and not 0.0 <= tissue_threshold <= 1.0:
        raise UserError(f"tissue_threshold: must be between 0 and 1 (got {tissue_threshold})")


def _clear_output(out: Path, overwrite: bool, src_dir: Path | None, sources: list) -> None:
    """Refuse (or, with ``overwrite``, empty) ``out/images`` and ``out/masks`` holding files;
    refuse ``out`` being the source DATA folder or holding a source file (checked *before*
    anything is deleted, so ``--overwrite`` can never remove the user's data)."""
    if src_dir is not None and out.resolve() == src_dir.resolve():
        raise UserError(f"{out}: the output folder must differ from the source")
    targets = [(out / sub).resolve() for sub in ("images", "masks")]
    for source in sources:
        for path in (source.image, source.mask):
            if path is not None and any(Path(path).resolve().is_relative_to(t) for t in targets):
                raise UserError(f"{out}: holds the source file {path}; choose another --out folder")
    for sub in ("images", "masks"):
        folder = out / sub
        if folder.is_dir() and any(folder.iterdir()):
            if not overwrite:
                raise UserError(f"{folder}: already holds files; choose an empty --out folder")
            shutil.rmtree(folder)


def _summarise(
    out: Path,
    sources: list[Source],
    tiles: list[TileWindow],
    blank: list[TileWindow],
    labelled: bool,
    opts: TileOptions,
    classes: list[str],
    written: tuple,
) -> TileSummary:
    """The :class:`TileSummary` of a run (``written``: :func:`write_tiles` result)."""
    rows, per_source, snapped = written
    return TileSummary(
        out=out,
        n_sources=len(sources),
        n_tiles=len(rows),
        n_labelled=sum(1 for t in tiles if t.keep and not t.empty) if labelled else 0,
        n_empty=sum(t.empty for t in tiles),
        n_empty_kept=sum(1 for t in tiles if t.keep and t.empty),
        n_blank_dropped=len(blank),
        size=opts.size,
        stride=opts.stride,
        level=opts.level,
        seed=opts.seed,
        classes=classes,
        snapped_pixels=snapped,
        per_source=per_source,
    )


def tile_dataset(
    src,
    out,
    size: int = 512,
    stride: int | None = None,
    keep_empty: float = 0.1,
    tissue_threshold: float | None = None,
    level: int = 0,
    seed: int = 0,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
    masks=None,
    palette: Palette | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Cut images (and masks) into aligned ``size`` x ``size`` patches; write a DATA folder.

    Args:
        src: a DATA folder (``images/`` + ``masks/``, or images with ``*_mask`` files), one
            image file (its mask from ``masks`` or ``x_mask.*`` next to it), or a list of
            ``(image, mask)`` pairs. Without any mask the images are tiled unlabelled.
        out: the DATA folder to write (``images/``, ``masks/``, ``tiles.csv``,
            ``dataset.json``); must not already hold tiles unless ``overwrite``.
        size, stride: window side and step in pixels (stride defaults to size).
        keep_empty: fraction (0..1) of background-only tiles to keep, chosen at random.
        tissue_threshold: drop background-only tiles whose tissue share is below this (0..1).
        level: pyramid level of TIFF slides (0 = full resolution).
        seed: seed of the random choice of empty tiles.
        max_decode_pixels: largest non-tiled image (or TIFF chunk) decoded whole.
        masks: mask folder (with a DATA folder) or mask file (with one image).
        palette: class palette of the masks (default: ``dataset.json`` or discovered).

    Returns:
        A summary dict (counts, classes, paths; see :class:`TileSummary`).
    """
    size = int(size)
    stride = int(stride) if stride else size
    _check_arguments(size, stride, keep_empty, tissue_threshold)
    sources, meta, src_dir = find_sources(src, masks)
    out = Path(out)
    _clear_output(out, overwrite, src_dir, sources)
    labelled = sources[0].mask is not None
    classes: list[str] = list(meta.get("classes") or []) if not labelled else []
    converter = None
    bg = 0
    pal = None
    if labelled:
        pal, classes, bg = mask_palette(sources, meta, level, size, max_decode_pixels, palette)
        converter = MaskConverter(pal)
    opts = TileOptions(
        size=size,
        stride=stride,
        keep_empty=keep_empty,
        tissue_threshold=tissue_threshold,
        level=level,
        seed=seed,
        max_decode_pixels=max_decode_pixels,
    )
    tiles, shapes = plan_windows(sources, opts, converter, bg)
    blank = select_windows(tiles, labelled, opts)
    written = write_tiles(out, sources, tiles, shapes, opts, converter, progress)
    write_tiles_csv(out / "tiles.csv", written[0])
    summary = _summarise(out, sources, tiles, blank, labelled, opts, classes, written)
    write_tiles_meta(out, meta, summary, sources, src, pal, keep_empty, tissue_threshold, written[0])
    return summary.as_dict()
