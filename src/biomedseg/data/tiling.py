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
at most ``BAND_BYTES``) through :class:`biomedseg.io.slides.SlideReader`: tiled TIFF/BigTIFF/
OME-TIFF are never decoded whole; PNG/JPEG above ``max_decode_pixels`` are refused.
Masks: values are mapped to class indices per window with the palette of the data set
(``dataset.json`` ``palette``, else discovered from windows sampled over every mask).
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.data.discovery import natural_key
from biomedseg.data.fingerprint import MaskConverter
from biomedseg.errors import UserError
from biomedseg.io.images import IMAGE_EXTENSIONS, is_image_file
from biomedseg.io.masks import Palette, discover_palette
from biomedseg.io.slides import MAX_DECODE_PIXELS, SlideReader
from biomedseg.io.writers import write_json, write_png, write_text, write_tiff

log = logging.getLogger("biomedseg")

#: Largest band (image rows of one window row) read at once; wider images are read in chunks.
BAND_BYTES = 256 * 2**20
#: Saturation above which an RGB pixel is tissue.
TISSUE_SATURATION = 0.07
#: Grey pixels darker than this share of the type's range are tissue.
TISSUE_GREY = 0.85
#: Mask windows sampled per mask to discover the palette.
PALETTE_WINDOWS = 24
_BACKGROUND_NAMES = ("background", "bg", "back")


@dataclass
class Source:
    id: str
    image: Path
    mask: Path | None


@dataclass
class _Tile:
    src: int
    x: int
    y: int
    w: int
    h: int
    empty: bool
    keep: bool = True
    tissue: float | None = None


@dataclass
class TileSummary:
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


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride``, the last one aligned to the border."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


# ----------------------------------------------------------------------------- sources
def _sources(src, masks) -> tuple[list[Source], dict, Path | None]:
    """Image/mask pairs from a DATA folder, one image file (+ mask) or a list of pairs."""
    if isinstance(src, (list, tuple)):
        out = []
        for item in src:
            if isinstance(item, (list, tuple)):
                img, msk = Path(item[0]), (Path(item[1]) if len(item) > 1 and item[1] is not None else None)
            else:
                img, msk = Path(item), None
            out.append(Source(img.stem, img, msk))
        return _check_sources(out), {}, None
    src = Path(src)
    if src.is_file():
        mask = Path(masks) if masks is not None else _mask_next_to(src)
        return _check_sources([Source(src.stem, src, mask)]), {}, None
    if not src.is_dir():
        raise UserError(f"{src}: no such file or folder")
    from biomedseg.data.inventory import scan_data

    scan = scan_data(src, masks=masks)
    problems = []
    if scan.meta_problem:
        problems.append(scan.meta_problem)
    if scan.multi_masks:
        it = scan.multi_masks[0]
        problems.append(f"{len(scan.multi_masks)} images have several masks (e.g. {it.id}: "
                        f"{', '.join(p.name for p in [it.mask] + it.extra_masks)}); merge them first")
    if scan.unpaired_masks:
        problems.append(f"{len(scan.unpaired_masks)} masks have no image "
                        f"(e.g. {scan.unpaired_masks[0].name})")
    if scan.masks_dir is not None and scan.unpaired_images:
        problems.append(f"{len(scan.unpaired_images)} images have no mask "
                        f"(e.g. {scan.unpaired_images[0].image.name})")
    if scan.duplicate_ids:
        problems.append(f"2 images share the id {scan.duplicate_ids[0][0]}")
    if problems:
        raise UserError(f"{src}: cannot tile: " + "; ".join(problems) + " (run `biomedseg audit` for details)")
    sources = [Source(it.id, it.image, it.mask) for it in scan.items]
    return _check_sources(sources), scan.meta or {}, src


def _mask_next_to(image: Path) -> Path | None:
    from biomedseg.data.discovery import MASK_SUFFIXES

    for suffix in MASK_SUFFIXES:
        for ext in sorted(IMAGE_EXTENSIONS):
            for e in (ext, ext.upper()):
                cand = image.with_name(image.stem + suffix + e)
                if cand.is_file():
                    return cand
    return None


def _check_sources(sources: list[Source]) -> list[Source]:
    if not sources:
        raise UserError("nothing to tile: no images given")
    seen = set()
    for s in sources:
        if not s.image.is_file():
            raise UserError(f"{s.image}: image not found")
        if not is_image_file(s.image):
            raise UserError(f"{s.image}: not an image file")
        if s.mask is not None and not s.mask.is_file():
            raise UserError(f"{s.mask}: mask not found")
        if s.id in seen:
            raise UserError(f"{s.image}: two sources share the id {s.id}")
        seen.add(s.id)
    labelled = [s.mask is not None for s in sources]
    if any(labelled) and not all(labelled):
        missing = [s.image.name for s in sources if s.mask is None]
        raise UserError(f"{len(missing)} images have no mask (e.g. {missing[0]}); give masks for all or none")
    return sources


# ----------------------------------------------------------------------------- masks
class _MaskWindows:
    """Mask windows in class indices, aligned with the image at ``level``."""

    def __init__(self, path: Path, level: int, image: SlideReader, max_decode_pixels: int) -> None:
        self.path = path
        self.factor = (1.0, 1.0)
        try:
            self.reader = SlideReader(path, level=level, raw=True, max_decode_pixels=max_decode_pixels)
        except UserError:
            if level == 0:
                raise
            # masks rarely have pyramids: sample the level-0 mask at the level's resolution
            self.reader = SlideReader(path, level=0, raw=True, max_decode_pixels=max_decode_pixels)
            if self.reader.shape != image.level_shapes[0]:
                raise UserError(f"{path}: mask is {self.reader.shape[1]}x{self.reader.shape[0]} but its image "
                                f"is {image.level_shapes[0][1]}x{image.level_shapes[0][0]}") from None
            self.factor = image.downsample
        if self.factor == (1.0, 1.0) and self.reader.shape != image.shape:
            raise UserError(f"{path}: mask is {self.reader.shape[1]}x{self.reader.shape[0]} but its image "
                            f"is {image.shape[1]}x{image.shape[0]} (level {level})")

    @property
    def row_bytes(self) -> int:
        """Bytes read per pixel of a window row (larger when sampling a finer mask)."""
        r = self.reader
        return int(np.ceil(r.stored_channels * r.dtype.itemsize * self.factor[0] * self.factor[1]))

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        if self.factor == (1.0, 1.0):
            return self.reader.read(y, x, h, w)
        fy, fx = self.factor
        H0, W0 = self.reader.shape
        # the level-0 pixel nearest to each level pixel's centre (2x: even rows/columns)
        rows = np.clip(np.floor((np.arange(y, y + h) + 0.5) * fy - 0.5).astype(np.int64), 0, H0 - 1)
        cols = np.clip(np.floor((np.arange(x, x + w) + 0.5) * fx - 0.5).astype(np.int64), 0, W0 - 1)
        block = self.reader.read(int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
        return np.ascontiguousarray(block[rows - rows[0]][:, cols - cols[0]])

    def close(self) -> None:
        self.reader.close()


def _sample_windows(sources: list[Source], level: int, size: int, max_decode_pixels: int) -> list[np.ndarray]:
    """Up to ``PALETTE_WINDOWS`` mask windows per mask (evenly spread), values as stored."""
    out = []
    per = max(2, min(PALETTE_WINDOWS, 400 // max(len(sources), 1)))
    for s in sources:
        with SlideReader(s.image, level=level, max_decode_pixels=max_decode_pixels) as img:
            mw = _MaskWindows(s.mask, level, img, max_decode_pixels)
            try:
                H, W = img.shape
                ys, xs = window_starts(H, size, size), window_starts(W, size, size)
                grid = [(y, x) for y in ys for x in xs]
                picks = np.linspace(0, len(grid) - 1, min(per, len(grid))).round().astype(int)
                for k in sorted(set(picks.tolist())):
                    y, x = grid[k]
                    out.append(mw.read(y, x, min(size, H), min(size, W)))
            finally:
                mw.close()
    return out


def _palette(sources, meta: dict, level: int, size: int, max_decode_pixels: int,
             palette: Palette | None) -> tuple[Palette, list[str], int]:
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else None
    if palette is None and isinstance(meta.get("palette"), (dict, list)):
        try:
            palette = Palette.from_json(meta["palette"])
        except (KeyError, TypeError, ValueError):
            palette = None
    if palette is None:
        windows = _sample_windows(sources, level, size, max_decode_pixels)
        with tempfile.TemporaryDirectory(prefix="biomedseg_palette_") as tmp:
            paths = []
            for k, win in enumerate(windows):
                p = Path(tmp) / f"w{k:05d}.png"
                if win.dtype not in (np.uint8, np.uint16):
                    win = np.clip(np.rint(np.nan_to_num(win)), 0, 65535).astype(np.uint16)
                if win.ndim == 3 and win.dtype != np.uint8:
                    win = (win // 257).astype(np.uint8)
                write_png(p, win)
                paths.append(p)
            palette = discover_palette(paths)
        if classes and palette.channels == 1 and all(v[0] < 32 for v in palette.values) \
                and palette.is_identity:
            palette = Palette.identity(len(classes))
    k = palette.n_classes
    if classes and len(classes) != k:
        raise UserError(f"dataset.json names {len(classes)} classes but the masks use {k} values "
                        f"({palette.describe()})")
    if not classes:
        classes = ["background", "foreground"] if k <= 2 else ["background"] + [f"class_{i}" for i in range(1, k)]
        if k < 2:
            palette = Palette(list(palette.values) + [(1,) if palette.values == [(0,)] else (255,)]) \
                if palette.channels == 1 else Palette(list(palette.values) + [(255, 255, 255)])
    bg = next((i for i, n in enumerate(classes) if str(n).lower() in _BACKGROUND_NAMES), 0)
    return palette, [str(c) for c in classes], bg


# ----------------------------------------------------------------------------- tissue
def tissue_fraction(window: np.ndarray) -> float:
    """Share of tissue pixels in an image window (see the module docstring)."""
    if window.ndim == 3 and window.shape[2] >= 3:
        rgb = window[..., :3].astype(np.float32)
        mx = rgb.max(axis=2)
        mn = rgb.min(axis=2)
        sat = (mx - mn) / np.maximum(mx, 1e-6)
        return float(np.count_nonzero(sat >= TISSUE_SATURATION)) / max(sat.size, 1)
    grey = window if window.ndim == 2 else window[..., 0]
    top = 255.0 if grey.dtype == np.uint8 else 65535.0 if grey.dtype == np.uint16 else float(np.nanmax(grey) or 1.0)
    return float(np.count_nonzero(grey < TISSUE_GREY * top)) / max(grey.size, 1)


# ----------------------------------------------------------------------------- bands
def _column_chunks(xs: list[int], size: int, width: int, row_bytes: int) -> list[list[int]]:
    """Group window origins of one row so that each band chunk stays under BAND_BYTES."""
    max_w = max(size, BAND_BYTES // max(row_bytes * size, 1))
    chunks, cur = [], []
    for x in xs:
        if cur and (x + size) - cur[0] > max_w:
            chunks.append(cur)
            cur = []
        cur.append(x)
    if cur:
        chunks.append(cur)
    return chunks


def _bands(reader, ys, xs, size, height, width, row_bytes, rows_needed=None):
    """Yield ``(y, x, window)`` for every window, reading one band chunk at a time."""
    h = min(size, height)
    w = min(size, width)
    for y in ys:
        cols = xs if rows_needed is None else rows_needed.get(y, [])
        if not cols:
            continue
        for chunk in _column_chunks(sorted(cols), size, width, row_bytes):
            x0, x1 = chunk[0], min(chunk[-1] + w, width)
            band = reader.read(y, x0, h, x1 - x0)
            for x in chunk:
                yield y, x, band[:, x - x0:x - x0 + w]


def _write_image(path_stem: Path, win: np.ndarray) -> str:
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


# ----------------------------------------------------------------------------- main
def tile_dataset(src, out, size: int = 512, stride: int | None = None, keep_empty: float = 0.1,
                 tissue_threshold: float | None = None, level: int = 0, seed: int = 0,
                 max_decode_pixels: int = MAX_DECODE_PIXELS, masks=None, palette: Palette | None = None,
                 overwrite: bool = False, progress: bool = True) -> dict:
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
    if size < 16:
        raise UserError(f"size: must be at least 16 pixels (got {size})")
    if not 0 < stride <= size:
        raise UserError(f"stride: must be between 1 and the tile size {size} (got {stride})")
    if not 0.0 <= keep_empty <= 1.0:
        raise UserError(f"keep_empty: must be between 0 and 1 (got {keep_empty})")
    if tissue_threshold is not None and not 0.0 <= tissue_threshold <= 1.0:
        raise UserError(f"tissue_threshold: must be between 0 and 1 (got {tissue_threshold})")
    sources, meta, src_dir = _sources(src, masks)
    out = Path(out)
    for sub in ("images", "masks"):
        folder = out / sub
        if folder.is_dir() and any(folder.iterdir()):
            if not overwrite:
                raise UserError(f"{folder}: already holds files; choose an empty --out folder")
            shutil.rmtree(folder)
    if src_dir is not None and out.resolve() == src_dir.resolve():
        raise UserError(f"{out}: the output folder must differ from the source")
    labelled = sources[0].mask is not None
    classes: list[str] = list(meta.get("classes") or []) if not labelled else []
    converter = None
    bg = 0
    if labelled:
        pal, classes, bg = _palette(sources, meta, level, size, max_decode_pixels, palette)
        converter = MaskConverter(pal)
    else:
        pal = None
    rng = np.random.default_rng(seed)
    tiles: list[_Tile] = []
    shapes = []
    snapped = 0
    # pass 1: which windows are empty (mask) and, with a tissue threshold, blank
    for si, s in enumerate(sources):
        with SlideReader(s.image, level=level, max_decode_pixels=max_decode_pixels) as img:
            H, W = img.shape
            shapes.append({"id": s.id, "height": H, "width": W, "downsample": img.downsample,
                           "channels": img.channels, "dtype": str(img.dtype)})
            ys, xs = window_starts(H, size, stride), window_starts(W, size, stride)
            th, tw = min(size, H), min(size, W)
            empty: dict[tuple[int, int], bool] = {}
            if labelled:
                mw = _MaskWindows(s.mask, level, img, max_decode_pixels)
                try:
                    for y, x, win in _bands(mw, ys, xs, size, H, W, mw.row_bytes):
                        idx, n = converter.convert(win, str(s.mask))
                        empty[(y, x)] = not bool(np.any(idx != bg))
                finally:
                    mw.close()
            else:
                empty = {(y, x): False for y in ys for x in xs}
            tissue: dict[tuple[int, int], float] = {}
            if tissue_threshold is not None:
                need: dict[int, list[int]] = {}
                for (y, x), e in empty.items():
                    if e or not labelled:
                        need.setdefault(y, []).append(x)
                row_bytes = img.channels * img.dtype.itemsize
                for y, x, win in _bands(img, ys, xs, size, H, W, row_bytes, need):
                    tissue[(y, x)] = tissue_fraction(win)
            for y in ys:
                for x in xs:
                    tiles.append(_Tile(si, x, y, tw, th, empty[(y, x)], tissue=tissue.get((y, x))))
    # selection
    blank = [t for t in tiles if (t.empty or not labelled) and tissue_threshold is not None
             and t.tissue is not None and t.tissue < tissue_threshold]
    for t in blank:
        t.keep = False
    candidates = [k for k, t in enumerate(tiles) if t.empty and t.keep] if labelled else []
    n_keep = int(round(keep_empty * len(candidates)))
    chosen = set(rng.choice(len(candidates), size=n_keep, replace=False).tolist()) if n_keep else set()
    for j, k in enumerate(candidates):
        tiles[k].keep = j in chosen
    # pass 2: write the kept tiles
    (out / "images").mkdir(parents=True, exist_ok=True)
    if labelled:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    per_source = []
    kept_total = sum(t.keep for t in tiles)
    done = 0
    bar = _progress(progress, kept_total)
    for si, s in enumerate(sources):
        mine = {(t.y, t.x): t for t in tiles if t.src == si and t.keep}
        per_source.append({"id": s.id, "tiles": len(mine), **{k: v for k, v in shapes[si].items() if k != "id"}})
        if not mine:
            continue
        need: dict[int, list[int]] = {}
        for (y, x) in mine:
            need.setdefault(y, []).append(x)
        with SlideReader(s.image, level=level, max_decode_pixels=max_decode_pixels) as img:
            H, W = img.shape
            ys = sorted(need)
            mw = _MaskWindows(s.mask, level, img, max_decode_pixels) if labelled else None
            try:
                row_bytes = img.channels * img.dtype.itemsize
                mask_iter = (_bands(mw, ys, None, size, H, W, mw.row_bytes, need)
                             if mw is not None else None)
                for y, x, win in _bands(img, ys, None, size, H, W, row_bytes, need):
                    t = mine[(y, x)]
                    tid = f"{s.id}_L{level}_x{x}_y{y}" if level else f"{s.id}_x{x}_y{y}"
                    name = _write_image(out / "images" / tid, win)
                    if mw is not None:
                        my, mx, mwin = next(mask_iter)
                        assert (my, mx) == (y, x)
                        idx, n = converter.convert(mwin, str(s.mask))
                        snapped += n
                        write_png(out / "masks" / f"{tid}.png", idx)
                    ds = img.downsample
                    rows.append([tid, str(s.image), str(s.mask) if s.mask else "", x, y, t.w, t.h, level,
                                 f"{ds[0]:.6g}", f"{ds[1]:.6g}", int(t.empty), name])
                    done += 1
                    bar(done)
            finally:
                if mw is not None:
                    mw.close()
    bar(None)
    _write_csv(out / "tiles.csv", rows)
    n_empty = sum(t.empty for t in tiles)
    summary = TileSummary(out=out, n_sources=len(sources), n_tiles=len(rows),
                          n_labelled=sum(1 for t in tiles if t.keep and not t.empty) if labelled else 0,
                          n_empty=n_empty, n_empty_kept=sum(1 for t in tiles if t.keep and t.empty),
                          n_blank_dropped=len(blank), size=size, stride=stride, level=level, seed=seed,
                          classes=classes, snapped_pixels=snapped, per_source=per_source)
    _write_meta(out, meta, summary, sources, src, pal, keep_empty, tissue_threshold, rows)
    return summary.as_dict()


def _progress(enabled: bool, total: int):
    bar = None
    if enabled and total > 0:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="tile", unit="tile", leave=False, file=sys.stderr, mininterval=0.5)
        except ImportError:  # pragma: no cover
            bar = None
    state = {"n": 0}

    def update(n):
        if bar is None:
            return
        if n is None:
            bar.close()
            return
        bar.update(n - state["n"])
        state["n"] = n

    return update


def _write_csv(path: Path, rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["tile_id", "source_image", "source_mask", "x", "y", "w", "h", "level",
                     "downsample_y", "downsample_x", "empty", "file"])
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _write_meta(out: Path, meta: dict, summary: TileSummary, sources, src, pal, keep_empty,
                tissue_threshold, rows) -> None:
    tile_ids_by_source: dict[str, list[str]] = {}
    for r in rows:
        tile_ids_by_source.setdefault(r[1], []).append(r[0])
    info: dict = {
        "name": f"{meta.get('name') or (Path(str(src)).stem if isinstance(src, (str, Path)) else 'slides')}_tiles",
        "classes": summary.classes,
        "generated_by": "biomedseg tile",
        "layout": {"images": "images/<tile_id>.png (or .tif)", "masks": "masks/<tile_id>.png (class index)",
                   "provenance": "tiles.csv"},
        "tiling": {
            "source": [str(s) for s in src] if isinstance(src, (list, tuple)) else str(src),
            "size": summary.size, "stride": summary.stride, "level": summary.level,
            "keep_empty": keep_empty, "seed": summary.seed, "tissue_threshold": tissue_threshold,
            "n_sources": summary.n_sources, "n_tiles": summary.n_tiles, "n_empty": summary.n_empty,
            "n_empty_kept": summary.n_empty_kept, "n_blank_dropped": summary.n_blank_dropped,
            "last_window": "aligned to the image border (overlaps its neighbour); never padded",
            "source_palette": pal.to_json() if pal is not None else None,
            "snapped_pixels": summary.snapped_pixels,
        },
    }
    for key in ("modality", "task", "license", "source", "colormap_note"):
        if key in meta:
            info[f"source_{key}" if key == "source" else key] = meta[key]
    split = meta.get("split")
    if isinstance(split, dict):
        side_of = {str(i): side for side, ids in split.items() if isinstance(ids, list) for i in ids}
        tiled = {}
        for s in sources:
            side = side_of.get(s.id)
            if side is None:
                continue
            tiled.setdefault(side, []).extend(tile_ids_by_source.get(str(s.image), []))
        if tiled:
            info["split"] = {k: sorted(v, key=natural_key) for k, v in tiled.items()}
            info["split_method"] = "tiles follow the split of their source image in the source dataset.json"
    write_json(out / "dataset.json", info)
