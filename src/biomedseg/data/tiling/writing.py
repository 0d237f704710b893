"""Writing of the tiling: image and mask tiles (pass 2), ``tiles.csv`` provenance and
``dataset.json`` of the tiled DATA folder.

``tiles.csv`` has one row per written tile: ``tile_id, source_image, source_mask, x, y, w, h,
level, downsample_y, downsample_x, empty, file``; ``x, y, w, h`` are in pixels of the tiled
``level`` (level-0 pixels = value x downsample), so a prediction of a tile maps back to the
source.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.data.discovery import DATA_META, natural_key
from biomedseg.data.mask_values import MaskConverter
from biomedseg.data.progress import ProgressBar
from biomedseg.data.tiling.planning import TileOptions, TileWindow
from biomedseg.data.tiling.reading import MaskWindows, read_windows
from biomedseg.data.tiling.sources import Source
from biomedseg.io.masks import Palette
from biomedseg.io.sources import open_source
from biomedseg.io.writers import write_json, write_png, write_text, write_tiff

TILES_CSV_HEADER = [
    "tile_id",
    "source_image",
    "source_mask",
    "x",
    "y",
    "w",
    "h",
    "level",
    "downsample_y",
    "downsample_x",
    "empty",
    "file",
]


@dataclass
class TileSummary:
    """What ``tile_dataset`` wrote (counts of windows and tiles, settings, classes)."""

    out: Path
    n_sources: int
    n_tiles: int
    n_labelled: int
    n_empty: int
    n_empty_kept: int
    n_blank_dropped: int
    size: int
    stride: int
    level: int
    seed: int
    classes: list[str]
    snapped_pixels: int = 0
    per_source: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["out"] = str(self.out)
        return d


def write_image_tile(path_stem: Path, win: np.ndarray) -> str:
    """PNG for 8-bit (and 16-bit grey), compressed TIFF otherwise; returns the file name."""
    if win.ndim == 3 and win.shape[2] == 1:
        win = win[:, :, 0]
    if win.dtype == np.uint8 or (win.dtype == np.uint16 and win.ndim == 2):
        path = path_stem.with_suffix(".png")
        write_png(path, win)
    else:
        path = path_stem.with_suffix(".tif")
        write_tiff(path, win)
    return path.name


def _write_source_tiles(
    out: Path, s: Source, mine: dict, opts: TileOptions, converter: MaskConverter | None, bar: ProgressBar, rows: list
) -> int:
    """Write the kept windows ``mine`` (``{(y, x): TileWindow}``) of one source; append their
    ``tiles.csv`` rows to ``rows``; return the mask pixels snapped to the palette."""
    level = opts.level
    snapped = 0
    need: dict[int, list[int]] = {}
    for y, x in mine:
        need.setdefault(y, []).append(x)
    with open_source(s.image, level, max_decode_pixels=opts.max_decode_pixels) as img:
        H, W = img.shape
        ys = sorted(need)
        mw = MaskWindows(s.mask, level, img, opts.max_decode_pixels) if converter is not None else None
        try:
            row_bytes = img.channels * img.dtype.itemsize
            mask_iter = read_windows(mw, ys, None, opts.size, H, W, mw.row_bytes, need) if mw is not None else None
            for y, x, win in read_windows(img, ys, None, opts.size, H, W, row_bytes, need):
                t = mine[(y, x)]
                tid = f"{s.id}_L{level}_x{x}_y{y}" if level else f"{s.id}_x{x}_y{y}"
                name = write_image_tile(out / "images" / tid, win)
                if mw is not None:
                    my, mx, mwin = next(mask_iter)
                    assert (my, mx) == (y, x)
                    idx, n = converter.convert(mwin, str(s.mask))
                    snapped += n
                    write_png(out / "masks" / f"{tid}.png", idx)
                ds = img.downsample
                rows.append(
                    [
                        tid,
                        str(s.image),
                        str(s.mask) if s.mask else "",
                        x,
                        y,
                        t.w,
                        t.h,
                        level,
                        f"{ds[0]:.6g}",
                        f"{ds[1]:.6g}",
                        int(t.empty),
                        name,
                    ]
                )
                bar.update()
        finally:
            if mw is not None:
                mw.close()
    return snapped


def write_tiles(
    out: Path,
    sources: list[Source],
    tiles: list[TileWindow],
    shapes: list[dict],
    opts: TileOptions,
    converter: MaskConverter | None,
    progress: bool,
) -> tuple[list[list], list[dict], int]:
    """Pass 2: write the kept tiles to ``out/images`` (and class-index masks, uint8 PNG, to
    ``out/masks``). Returns ``(tiles.csv rows, per-source summaries, snapped mask pixels)``."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    if converter is not None:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[list] = []
    per_source = []
    snapped = 0
    bar = ProgressBar(progress, sum(t.keep for t in tiles), "tile", unit="tile", dynamic_ncols=False)
    for si, s in enumerate(sources):
        mine = {(t.y, t.x): t for t in tiles if t.src == si and t.keep}
        per_source.append({"id": s.id, "tiles": len(mine), **{k: v for k, v in shapes[si].items() if k != "id"}})
        if mine:
            snapped += _write_source_tiles(out, s, mine, opts, converter, bar, rows)
    bar.close()
    return rows, per_source, snapped


def write_tiles_csv(path: Path, rows: list[list]) -> None:
    """``tiles.csv``: the header, then one row per tile."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TILES_CSV_HEADER)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _tiled_split(meta: dict, sources: list[Source], rows: list[list]) -> dict[str, list[str]]:
    """``{side: tile ids}``: tiles follow the ``split`` of their source image in ``meta``."""
    split = meta.get("split")
    if not isinstance(split, dict):
        return {}
    tile_ids_by_source: dict[str, list[str]] = {}
    for r in rows:
        tile_ids_by_source.setdefault(r[1], []).append(r[0])
    side_of = {str(i): side for side, ids in split.items() if isinstance(ids, list) for i in ids}
    tiled: dict[str, list[str]] = {}
    for s in sources:
        side = side_of.get(s.id)
        if side is None:
            continue
        tiled.setdefault(side, []).extend(tile_ids_by_source.get(str(s.image), []))
    return {k: sorted(v, key=natural_key) for k, v in tiled.items()}


def _tiles_pixel_size(meta: dict, sources: list[Source], rows: list[list], level: int):
    """``pixel_size`` of the tiles' dataset.json: their source's (µm) at the tiled level, ``[y, x]``
    when every source has the same, else ``{tile id: [y, x]}``; ``None`` when no source has one."""
    from biomedseg.io.pixel_size import pixel_size, resolve_pixel_size

    by_source = {}
    for s in sources:
        try:
            px = resolve_pixel_size(s.image, meta, s.id)[0] if level == 0 else pixel_size(s.image, level)
        except UserError:  # a malformed dataset.json value: the file's own
            px = pixel_size(s.image, level)
        by_source[str(s.image)] = list(px) if px is not None else None
    known = [v for v in by_source.values() if v is not None]
    if not known:
        return None
    if len(known) == len(by_source) and all(v == known[0] for v in known):
        return known[0]
    return {r[0]: by_source[r[1]] for r in rows if by_source.get(r[1]) is not None}


def write_tiles_meta(
    out: Path,
    meta: dict,
    summary: TileSummary,
    sources: list[Source],
    src,
    pal: Palette | None,
    keep_empty: float,
    tissue_threshold: float | None,
    rows: list[list],
) -> None:
    """``out/dataset.json`` of the tiles: classes, tiling settings and counts, the source
    palette, kept metadata of the source data set and the split carried over to the tiles."""
    info: dict = {
        "name": f"{meta.get('name') or (Path(str(src)).stem if isinstance(src, (str, Path)) else 'slides')}_tiles",
        "classes": summary.classes,
        "generated_by": "biomedseg tile",
        "layout": {
            "images": "images/<tile_id>.png (or .tif)",
            "masks": "masks/<tile_id>.png (class index)",
            "provenance": "tiles.csv",
        },
        "tiling": {
            "source": [str(s) for s in src] if isinstance(src, (list, tuple)) else str(src),
            "size": summary.size,
            "stride": summary.stride,
            "level": summary.level,
            "keep_empty": keep_empty,
            "seed": summary.seed,
            "tissue_threshold": tissue_threshold,
            "n_sources": summary.n_sources,
            "n_tiles": summary.n_tiles,
            "n_empty": summary.n_empty,
            "n_empty_kept": summary.n_empty_kept,
            "n_blank_dropped": summary.n_blank_dropped,
            "last_window": "aligned to the image border (overlaps its neighbour); never padded",
            "source_palette": pal.to_json() if pal is not None else None,
            "snapped_pixels": summary.snapped_pixels,
        },
    }
    for key in ("modality", "task", "license", "source", "colormap_note"):
        if key in meta:
            info[f"source_{key}" if key == "source" else key] = meta[key]
    px = _tiles_pixel_size(meta, sources, rows, summary.level)
    if px is not None:
        info["pixel_size"] = px
    tiled = _tiled_split(meta, sources, rows)
    if tiled:
        info["split"] = tiled
        info["split_method"] = "tiles follow the split of their source image in the source dataset.json"
    write_json(out / DATA_META, info)
