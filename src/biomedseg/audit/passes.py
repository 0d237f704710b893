"""The two reading passes of the data audit.

1. :func:`sample_mask_tables` + :func:`choose_palette`: value tables of up to
   ``PALETTE_SAMPLE`` masks (evenly spread) fix the majority mask encoding and the palette the
   audit converts masks with.
2. :func:`measure_dataset`: every image measured and every mask read once (value table,
   conversion to classes, objects); extra masks of an image get a value table only.

:func:`measure_pixel_sizes` reads the physical pixel size of every image (``dataset.json``'s
``pixel_size``, else the file's metadata; headers only).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from biomedseg.audit.findings import finding
from biomedseg.audit.image_measurements import THUMB, ImageRecord, IntensityAccumulator, measure_image
from biomedseg.audit.mask_measurements import MaskRecord, classify_encoding, mask_levels, measure_mask, off_palette
from biomedseg.core.errors import UserError
from biomedseg.data.class_palette import add_foreground_class, default_class_names, palette_from_meta, resolve_ignore
from biomedseg.data.inventory import Scan, ScanItem
from biomedseg.data.mask_values import (
    MaskConverter,
    ValueTable,
    grey_or_colour,
    labelled_table,
    mask_value_table,
    value_table,
)
from biomedseg.data.progress import ProgressBar
from biomedseg.io.images import read_raw
from biomedseg.io.masks import Palette, discover_palette, evenly_spaced
from biomedseg.io.pixel_size import pixel_size, resolve_pixel_size

#: Masks read to fix the palette before the main pass (evenly spread over the data set).
PALETTE_SAMPLE = 200
_BACKGROUND_NAMES = ("background", "bg", "back", "backgrnd")


def is_lossy(path: Path | None) -> bool:
    """True for JPEG files (their masks carry compression damage)."""
    return path is not None and path.suffix.lower() in (".jpg", ".jpeg")


# ----------------------------------------------------------------------------- palette
def sample_mask_tables(scan: Scan) -> dict:
    """Value tables of up to ``PALETTE_SAMPLE`` masks: ``{path: ValueTable | error text}``."""
    tables: dict[Path, object] = {}
    for it in evenly_spaced([it for it in scan.items if it.mask is not None], PALETTE_SAMPLE):
        try:
            tables[it.mask] = mask_value_table(it.mask)
        except UserError as exc:
            tables[it.mask] = str(exc)
    return tables


def _class_names(meta: dict | None, k: int) -> tuple[list[str], bool]:
    """Class names from dataset.json (``given=True``) or defaults."""
    classes = (meta or {}).get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return list(classes), True
    return default_class_names(k), False


def _background(names: list[str], given: bool) -> int | None:
    for i, n in enumerate(names):
        if n.lower() in _BACKGROUND_NAMES:
            return i
    return None if given else 0


def _sample_encodings(tables: dict, ignore=None) -> dict[Path, str]:
    """Encoding of each readable sampled mask (its unlabelled value ``ignore`` left out)."""
    return {
        path: classify_encoding(mask_levels(labelled_table(t, ignore), is_lossy(path)))
        for path, t in tables.items()
        if not isinstance(t, str)
    }


def _discover_majority_palette(enc: dict[Path, str], majority: str, ignore=None) -> Palette:
    """``discover_palette`` on the masks of the majority encoding (``UserError`` if they are
    no class masks)."""
    use = list(enc) if majority == "rgb" else [p for p, e in enc.items() if e in (majority, "empty")]
    # JPEG masks carry compression damage (e.g. a background shifted to 1): they must not
    # define the classes when lossless masks exist
    use = [p for p in use if not is_lossy(p)] or use
    return discover_palette(use, ignore=ignore)


def _name_classes(
    meta: dict, palette: Palette, majority: str, info: dict, findings: list
) -> tuple[Palette, list[str], bool]:
    """``(palette, class names, names given in dataset.json)``: with class names and index masks
    the identity palette of K classes (``info["strict_k"]``), as training uses it."""
    names, given = _class_names(meta, palette.n_classes)
    if given and palette.channels == 1 and all(v[0] < 32 for v in palette.values) and majority in ("index", "empty"):
        # index masks with configured classes: training uses identity(K) and rejects values >= K
        info["strict_k"] = len(names)
        palette = Palette.identity(len(names))
    elif given and len(names) != palette.n_classes:
        findings.append(
            finding(
                "error",
                "class_count_mismatch",
                f"dataset.json names {len(names)} classes ({', '.join(names)}) but the masks use "
                f"{palette.n_classes} values ({palette.describe()}); training will refuse this",
            )
        )
        names, given = _class_names(None, palette.n_classes)
    if palette.n_classes < 2 and not given:
        names = ["background", "foreground"]
        palette = add_foreground_class(palette)
    return palette, names, given


def choose_palette(scan: Scan, tables: dict, findings: list) -> dict:
    """The majority mask encoding of the sampled masks and the palette the audit converts with
    (``discover_palette`` on the masks of the majority encoding, as training would find it on
    clean data; with class names in dataset.json and index masks: identity of K classes).

    Returns ``{"encoding", "palette" (Palette | None), "strict_k", "palette_source"}`` plus,
    with a palette, ``"names", "names_given", "background"`` (class index or ``None``).
    Problems are appended to ``findings``.
    """
    meta = scan.meta or {}
    readable = [path for path, tb in tables.items() if not isinstance(tb, str)]
    ignore, ignore_reason = resolve_ignore(None, meta, readable) if readable else (None, None)
    enc = _sample_encodings(tables, ignore)
    counts = Counter(e for e in enc.values() if e != "empty")
    majority = counts.most_common(1)[0][0] if counts else ("empty" if enc else None)
    info: dict = {
        "encoding": majority,
        "palette": None,
        "strict_k": None,
        "palette_source": None,
        "ignore": ignore,
        "ignore_reason": ignore_reason,
    }
    if majority is None:
        return info
    palette = palette_from_meta(meta)
    if palette is not None:
        info["palette_source"] = "dataset.json palette"
    else:
        try:
            palette = _discover_majority_palette(enc, majority, ignore)
            info["palette_source"] = "discovered"
        except UserError as exc:
            findings.append(
                finding(
                    "error",
                    "masks_not_class_masks",
                    f"masks could not be read as class masks: {exc}; class statistics are skipped",
                )
            )
            return info
    palette, names, given = _name_classes(meta, palette, majority, info, findings)
    if ignore is not None:
        try:
            palette = Palette(palette.values, ignore=ignore)
        except ValueError:
            findings.append(
                finding(
                    "error",
                    "ignore_value_is_a_class",
                    f"the unlabelled value {ignore} is also a class value; training will refuse this",
                )
            )
            info["ignore"] = None
    info.update(palette=palette, names=names, names_given=given, background=_background(names, given))
    return info


# ----------------------------------------------------------------------------- main pass
def mask_info(table: ValueTable, path: Path, palette: Palette | None, strict_k: int | None) -> dict:
    """``{"shape", "encoding", "levels" (first 8)}`` of one mask, with a palette also ``"off"``
    (see :func:`off_palette`) and ``"total"`` (pixels)."""
    table = labelled_table(table, palette.ignore if palette is not None else None)
    levels = mask_levels(table, is_lossy(path))
    info = {
        "shape": tuple(table.shape),
        "encoding": classify_encoding(levels),
        "levels": [list(v) if len(v) > 1 else v[0] for v in levels[:8]],
    }
    if palette is not None:
        info["off"] = off_palette(table, palette, strict_k, is_lossy(path))
        info["total"] = table.total
    return info


class _MaskPass:
    """Reads the masks of each item: a value table of every mask, classes and objects of the
    main one. Collects ``minfo`` (:func:`mask_info` per path) and object areas per class."""

    def __init__(self, pal: dict) -> None:
        self.palette: Palette | None = pal.get("palette")
        self.strict_k = pal.get("strict_k")
        self.converter = MaskConverter(self.palette) if self.palette is not None else None
        self.k = self.palette.n_classes if self.palette is not None else 0
        bg = pal.get("background")
        self.obj_classes = [c for c in range(self.k) if c != bg] if self.palette is not None else []
        self.minfo: dict[Path, dict] = {}
        self.areas: dict[int, list[np.ndarray]] = {c: [] for c in self.obj_classes}

    def measure_item(self, it: ScanItem, errors: dict) -> MaskRecord | None:
        """The :class:`MaskRecord` of the item's main mask (``None``: none or unreadable)."""
        record = None
        for mpath in ([it.mask] if it.mask is not None else []) + it.extra_masks:
            measured = self._measure_file(mpath, mpath == it.mask, errors)
            if measured is not None:
                record = measured
        return record

    def _measure_file(self, mpath: Path, main: bool, errors: dict) -> MaskRecord | None:
        try:
            values = grey_or_colour(read_raw(mpath))
        except UserError as exc:
            errors[mpath] = str(exc)
            return None
        table = value_table(values)
        self.minfo[mpath] = mask_info(table, mpath, self.palette, self.strict_k)
        if self.converter is None or not main:
            return None
        try:
            counts, n_snapped = self.converter.class_counts(table)
            unlabelled = self.converter.unlabelled_pixels(table)
        except UserError as exc:  # a colour mask among grey ones: an encoding outlier
            self.minfo[mpath]["convert_error"] = str(exc)
            return None
        if any(counts[c] for c in self.obj_classes):
            index_mask, _ = self.converter.convert(values, str(mpath))
        else:  # background only: nothing to label
            index_mask = np.zeros(table.shape, np.uint8)
        record = measure_mask(index_mask, self.k, n_snapped, self.obj_classes, counts)
        record.unlabelled = unlabelled
        for c, a in record.areas.items():
            self.areas[c].append(a)
        record.areas = {c: int(a.size) for c, a in record.areas.items()}
        return record

    def pooled_areas(self) -> dict[int, np.ndarray]:
        """Object areas per object class, ``(N,) int64`` each."""
        return {c: (np.concatenate(a) if a else np.zeros(0, np.int64)) for c, a in self.areas.items()}


def _measure_image_into(
    path: Path, rng: np.random.Generator, thumb_out: np.ndarray, acc: IntensityAccumulator, errors: dict
) -> ImageRecord | None:
    """Measure one image, write its thumbnail into ``thumb_out`` (THUMB x THUMB uint8), pool
    its intensities into ``acc``; return the slimmed record (``None`` if unreadable)."""
    try:
        rec, thumb = measure_image(path, rng)
    except UserError as exc:
        errors[path] = str(exc)
        return None
    thumb_out[...] = thumb
    acc.add(rec)
    rec.sample = None  # pooled already; keep the records small
    rec.hist = None
    return rec


def measure_dataset(scan: Scan, pal: dict, progress: bool) -> dict:
    """One pass over the data: every image measured, every mask read once (value table,
    conversion to classes, objects); extra masks of an image get a value table only.

    Returns ``{"thumbs": (N, THUMB, THUMB) uint8, "recs": [ImageRecord | None] * N,
    "mrecs": [MaskRecord | None] * N, "errors": {path: text}, "acc": IntensityAccumulator,
    "minfo": {mask path: mask_info}, "areas": {class: (M,) int64 object areas}}``.
    """
    items = scan.items
    n = len(items)
    thumbs = np.zeros((n, THUMB, THUMB), np.uint8)
    rng = np.random.default_rng(0)
    masks = _MaskPass(pal)
    recs: list = [None] * n
    mrecs: list = [None] * n
    errors: dict[Path, str] = {}
    acc = IntensityAccumulator()
    bar = ProgressBar(progress, n, "audit")
    for idx, it in enumerate(items):
        recs[idx] = _measure_image_into(it.image, rng, thumbs[idx], acc, errors)
        mrecs[idx] = masks.measure_item(it, errors)
        bar.update()
    bar.close()
    return {
        "thumbs": thumbs,
        "recs": recs,
        "mrecs": mrecs,
        "errors": errors,
        "acc": acc,
        "minfo": masks.minfo,
        "areas": masks.pooled_areas(),
    }


def measure_pixel_sizes(scan: Scan) -> dict:
    """``{"sizes": [(y_um, x_um) | None] * N, "sources": ["dataset.json" | "file" | None] * N,
    "problem": text of a malformed dataset.json pixel_size or None}`` (then files are used)."""
    sizes, sources, problem = [], [], None
    for it in scan.items:
        try:
            size, source = resolve_pixel_size(it.image, scan.meta, it.id)
        except UserError as exc:
            problem = problem or str(exc)
            size = pixel_size(it.image)
            source = "file" if size is not None else None
        sizes.append(size)
        sources.append(source)
    return {"sizes": sizes, "sources": sources, "problem": problem}
