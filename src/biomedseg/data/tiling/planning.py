"""Window planning for the tiling: which windows exist, which are empty or blank, which are kept.

Pass 1 (:func:`plan_windows`) reads every mask window (class indices: empty = background
only) and, with a tissue threshold, the image windows that may be dropped as blank slide
background. :func:`select_windows` then drops blank windows and keeps a random
``keep_empty`` fraction of the empty ones (exactly ``round(keep_empty * n_empty)``, chosen
with ``numpy.random.default_rng(seed)``). Windows with labelled pixels are always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biomedseg.data.mask_values import MaskConverter
from biomedseg.data.tiling.reading import MaskWindows, read_windows, window_starts
from biomedseg.data.tiling.sources import Source
from biomedseg.io.sources import ImageSource, open_source

#: Saturation above which an RGB pixel is tissue.
TISSUE_SATURATION = 0.07
#: Grey pixels darker than this share of the type's range are tissue.
TISSUE_GREY = 0.85


@dataclass
class TileOptions:
    """Window geometry and selection settings of one tiling run (see ``tile_dataset``)."""

    size: int
    stride: int
    keep_empty: float
    tissue_threshold: float | None
    level: int
    seed: int
    max_decode_pixels: int


@dataclass
class TileWindow:
    """One window of source ``src`` at ``(x, y)`` (level pixels), ``w`` x ``h`` pixels."""

    src: int
    x: int
    y: int
    w: int
    h: int
    empty: bool
    keep: bool = True
    tissue: float | None = None


def tissue_fraction(window: np.ndarray) -> float:
    """Share of tissue pixels in an image window (``(H, W)`` or ``(H, W, C)``, any dtype):
    colour saturation (max-min)/max >= ``TISSUE_SATURATION`` for RGB; for grey images darker
    than ``TISSUE_GREY`` of the type's range (stained tissue on a bright background)."""
    if window.ndim == 3 and window.shape[2] >= 3:
        rgb = window[..., :3].astype(np.float32)
        mx = rgb.max(axis=2)
        mn = rgb.min(axis=2)
        sat = (mx - mn) / np.maximum(mx, 1e-6)
        return float(np.count_nonzero(sat >= TISSUE_SATURATION)) / max(sat.size, 1)
    grey = window if window.ndim == 2 else window[..., 0]
    top = 255.0 if grey.dtype == np.uint8 else 65535.0 if grey.dtype == np.uint16 else float(np.nanmax(grey) or 1.0)
    return float(np.count_nonzero(grey < TISSUE_GREY * top)) / max(grey.size, 1)


def _empty_flags(
    s: Source, img: ImageSource, ys, xs, opts: TileOptions, converter: MaskConverter | None, bg: int
) -> dict[tuple[int, int], bool]:
    """``{(y, x): background only?}`` per window (all ``False`` without masks)."""
    if converter is None:
        return {(y, x): False for y in ys for x in xs}
    H, W = img.shape
    empty: dict[tuple[int, int], bool] = {}
    mw = MaskWindows(s.mask, opts.level, img, opts.max_decode_pixels)
    try:
        for y, x, win in read_windows(mw, ys, xs, opts.size, H, W, mw.row_bytes):
            idx, n = converter.convert(win, str(s.mask))
            empty[(y, x)] = not bool(np.any(idx != bg))
    finally:
        mw.close()
    return empty


def _tissue_fractions(
    img: ImageSource, ys, xs, empty: dict, labelled: bool, opts: TileOptions
) -> dict[tuple[int, int], float]:
    """Tissue share of the windows that may be dropped as blank (empty, or all if unlabelled)."""
    if opts.tissue_threshold is None:
        return {}
    H, W = img.shape
    need: dict[int, list[int]] = {}
    for (y, x), e in empty.items():
        if e or not labelled:
            need.setdefault(y, []).append(x)
    row_bytes = img.channels * img.dtype.itemsize
    return {(y, x): tissue_fraction(win) for y, x, win in read_windows(img, ys, xs, opts.size, H, W, row_bytes, need)}


def plan_windows(
    sources: list[Source], opts: TileOptions, converter: MaskConverter | None, bg: int
) -> tuple[list[TileWindow], list[dict]]:
    """Pass 1: every window of every source, flagged empty (and with its tissue share).

    Returns ``(windows, shapes)``; ``shapes[i]``: ``{"id", "height", "width", "downsample",
    "channels", "dtype"}`` of source ``i`` at the tiled level.
    """
    tiles: list[TileWindow] = []
    shapes = []
    for si, s in enumerate(sources):
        with open_source(s.image, opts.level, max_decode_pixels=opts.max_decode_pixels) as img:
            img.check_readable()  # a file too large to decode is refused before any tile is written
            H, W = img.shape
            shapes.append(
                {
                    "id": s.id,
                    "height": H,
                    "width": W,
                    "downsample": img.downsample,
                    "channels": img.channels,
                    "dtype": str(img.dtype),
                }
            )
            ys, xs = window_starts(H, opts.size, opts.stride), window_starts(W, opts.size, opts.stride)
            th, tw = min(opts.size, H), min(opts.size, W)
            empty = _empty_flags(s, img, ys, xs, opts, converter, bg)
            tissue = _tissue_fractions(img, ys, xs, empty, converter is not None, opts)
            for y in ys:
                for x in xs:
                    tiles.append(TileWindow(si, x, y, tw, th, empty[(y, x)], tissue=tissue.get((y, x))))
    return tiles, shapes


def select_windows(tiles: list[TileWindow], labelled: bool, opts: TileOptions) -> list[TileWindow]:
    """Set ``keep`` on every window: blank ones dropped, a random ``keep_empty`` share of the
    empty ones kept. Returns the blank (dropped) windows."""
    threshold = opts.tissue_threshold
    blank = [
        t
        for t in tiles
        if (t.empty or not labelled) and threshold is not None and t.tissue is not None and t.tissue < threshold
    ]
    for t in blank:
        t.keep = False
    rng = np.random.default_rng(opts.seed)
    candidates = [k for k, t in enumerate(tiles) if t.empty and t.keep] if labelled else []
    n_keep = int(round(opts.keep_empty * len(candidates)))
    chosen = set(rng.choice(len(candidates), size=n_keep, replace=False).tolist()) if n_keep else set()
    for j, k in enumerate(candidates):
        tiles[k].keep = j in chosen
    return blank
