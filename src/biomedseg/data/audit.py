"""Data audit: the check to run before training (``biomedseg audit DATA --out DIR``).

:func:`run_audit` reads every image and mask once (plus up to 200 masks, evenly spread, read
first to fix the palette) and never fails on dirty data: unreadable files, unpaired images or masks,
several masks for one image, size mismatches, mixed mask encodings are *findings*. Only a
missing folder or a folder without images raises ``UserError``.

It reports

- **inventory**: counts, formats, sizes, channels, bit depth, grey-stored-as-RGB, problems;
- **masks**: encoding (class indices, 0/255, grey levels, RGB colours), palette, off-palette
  (damaged) pixels per file, class pixel share, share of images containing each class, empty
  masks, connected objects per class (8-connectivity) with area percentiles, a recommended
  minimum object area and class weights;
- **intensities**: per-channel mean/std (the normalisation training uses), 0.5/50/99.5
  percentiles, value range (16-bit: the bits actually used);
- **near duplicates** (:mod:`biomedseg.data.duplicates`): groups of images that are the same
  picture up to noise / JPEG / a small shift (/ a flip with ``check_flips``), with the image
  distance and the mask agreement (Dice after alignment) of each verified pair; groups whose
  masks conflict (Dice < 0.9 or one empty, one not) and groups that straddle the
  ``dataset.json`` split (leakage) are flagged;
- ``fingerprint``: the subset planning needs (sizes, channels, intensities, class shares,
  object sizes, class weights).

With ``out`` it writes ``audit.json``, ``audit.html`` and PNG pictures in ``audit_files/``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from biomedseg.data import duplicates as dup
from biomedseg.data.discovery import name_list, natural_key
from biomedseg.data.fingerprint import (
    THUMB,
    IntensityAccumulator,
    MaskConverter,
    class_weights,
    classify_encoding,
    grey_or_colour,
    mask_levels,
    mask_value_table,
    measure_image,
    measure_mask,
    object_summary,
    off_palette,
    value_table,
)
from biomedseg.data.inventory import Scan, relative, scan_data
from biomedseg.errors import UserError
from biomedseg.io.images import read_image, read_raw
from biomedseg.io.masks import Palette, discover_palette, read_mask
from biomedseg.io.writers import write_json
from biomedseg.metrics import image_dice

log = logging.getLogger("biomedseg")

AUDIT_VERSION = 1
#: Mean foreground Dice of two near-duplicate masks below which they conflict.
CONFLICT_DICE = 0.9
#: Share of empty masks above which empty masks are a warning (else info).
EMPTY_WARNING = 0.10
#: Class pixel share below which a class is called rare.
RARE_CLASS = 0.01
#: Most duplicate-pair pictures drawn.
MAX_PAIR_PICTURES = 120
#: Most pairs listed per group in audit.json (worst Dice first).
MAX_PAIRS_PER_GROUP = 50
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_BACKGROUND_NAMES = ("background", "bg", "back", "backgrnd")


# ----------------------------------------------------------------------------- helpers
class _Progress:
    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled and total > 0:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="file", leave=False,
                                file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                self.bar = None

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _lossy(path: Path | None) -> bool:
    return path is not None and path.suffix.lower() in (".jpg", ".jpeg")


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _finding(severity: str, code: str, message: str, items: list | None = None,
             count: int | None = None) -> dict:
    return {"severity": severity, "code": code, "message": message,
            "count": count if count is not None else (len(items) if items is not None else 1),
            "items": (items or [])[:200]}


def _class_names(meta: dict | None, k: int) -> tuple[list[str], bool]:
    """Class names from dataset.json (``given=True``) or defaults."""
    classes = (meta or {}).get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return list(classes), True
    if k <= 2:
        return ["background", "foreground"][:max(k, 1)], False
    return ["background"] + [f"class_{i}" for i in range(1, k)], False


def _background(names: list[str], given: bool) -> int | None:
    for i, n in enumerate(names):
        if n.lower() in _BACKGROUND_NAMES:
            return i
    return None if given else 0


# ----------------------------------------------------------------------------- passes
#: Masks read to fix the palette before the main pass (evenly spread over the data set).
PALETTE_SAMPLE = 200


def _spread(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def _sample_pass(scan: Scan) -> dict:
    """Value tables of up to ``PALETTE_SAMPLE`` masks: ``{path: table | error text}``."""
    tables: dict[Path, object] = {}
    for it in _spread([it for it in scan.items if it.mask is not None], PALETTE_SAMPLE):
        try:
            tables[it.mask] = mask_value_table(it.mask)
        except UserError as exc:
            tables[it.mask] = str(exc)
    return tables


def _choose_palette(scan: Scan, tables: dict, findings: list) -> dict:
    """The majority mask encoding of the sampled masks and the palette the audit converts with
    (``discover_palette`` on the masks of the majority encoding, as training would find it on
    clean data; with class names in dataset.json and index masks: identity of K classes)."""
    meta = scan.meta or {}
    enc: dict[Path, str] = {}
    for path, t in tables.items():
        if not isinstance(t, str):
            enc[path] = classify_encoding(mask_levels(t, _lossy(path)))
    counts = Counter(e for e in enc.values() if e != "empty")
    majority = counts.most_common(1)[0][0] if counts else ("empty" if enc else None)
    info: dict = {"encoding": majority, "palette": None, "strict_k": None, "palette_source": None}
    if majority is None:
        return info
    palette = None
    if isinstance(meta.get("palette"), (dict, list)):
        try:
            palette = Palette.from_json(meta["palette"])
            info["palette_source"] = "dataset.json palette"
        except (KeyError, TypeError, ValueError):
            palette = None
    if palette is None:
        use = list(enc) if majority == "rgb" else [p for p, e in enc.items() if e in (majority, "empty")]
        # JPEG masks carry compression damage (e.g. a background shifted to 1): they must not
        # define the classes when lossless masks exist
        use = [p for p in use if not _lossy(p)] or use
        try:
            palette = discover_palette(use)
            info["palette_source"] = "discovered"
        except UserError as exc:
            findings.append(_finding(
                "error", "masks_not_class_masks",
                f"masks could not be read as class masks: {exc}; class statistics are skipped"))
            return info
    names, given = _class_names(meta, palette.n_classes)
    if given and palette.channels == 1 and all(v[0] < 32 for v in palette.values) \
            and majority in ("index", "empty"):
        # index masks with configured classes: training uses identity(K) and rejects values >= K
        info["strict_k"] = len(names)
        palette = Palette.identity(len(names))
    elif given and len(names) != palette.n_classes:
        findings.append(_finding(
            "error", "class_count_mismatch",
            f"dataset.json names {len(names)} classes ({', '.join(names)}) but the masks use "
            f"{palette.n_classes} values ({palette.describe()}); training will refuse this"))
        names, given = _class_names(None, palette.n_classes)
    if palette.n_classes < 2 and not given:
        names = ["background", "foreground"]
        if palette.channels == 1:
            extra = (1,) if palette.values == [(0,)] else (255,)
            palette = Palette(list(palette.values) + [extra])
        else:
            palette = Palette(list(palette.values) + [(255, 255, 255)])
    info.update(palette=palette, names=names, names_given=given, background=_background(names, given))
    return info


def _mask_info(table, path: Path, palette: Palette | None, strict_k: int | None) -> dict:
    levels = mask_levels(table, _lossy(path))
    info = {"shape": tuple(table.shape), "encoding": classify_encoding(levels),
            "levels": [list(v) if len(v) > 1 else v[0] for v in levels[:8]]}
    if palette is not None:
        info["off"] = off_palette(table, palette, strict_k, _lossy(path))
        info["total"] = table.total
    return info


def _image_pass(scan: Scan, pal: dict, progress: bool) -> dict:
    """One pass over the data: every image measured, every mask read once (value table,
    conversion to classes, objects); extra masks of an image get a value table only."""
    items = scan.items
    n = len(items)
    thumbs = np.zeros((n, THUMB, THUMB), np.uint8)
    rng = np.random.default_rng(0)
    palette: Palette | None = pal.get("palette")
    strict_k = pal.get("strict_k")
    converter = MaskConverter(palette) if palette is not None else None
    k = palette.n_classes if palette is not None else 0
    bg = pal.get("background")
    obj_classes = [c for c in range(k) if c != bg] if palette is not None else []
    recs: list = [None] * n
    mrecs: list = [None] * n
    minfo: dict[Path, dict] = {}
    errors: dict[Path, str] = {}
    acc = IntensityAccumulator()
    areas: dict[int, list[np.ndarray]] = {c: [] for c in obj_classes}
    bar = _Progress(progress, n, "audit")
    for idx, it in enumerate(items):
        try:
            rec, thumb = measure_image(it.image, rng)
            thumbs[idx] = thumb
            acc.add(rec)
            rec.sample = None  # pooled already; keep the records small
            rec.hist = None
            recs[idx] = rec
        except UserError as exc:
            errors[it.image] = str(exc)
        for mpath in ([it.mask] if it.mask is not None else []) + it.extra_masks:
            try:
                values = grey_or_colour(read_raw(mpath))
            except UserError as exc:
                errors[mpath] = str(exc)
                continue
            table = value_table(values)
            minfo[mpath] = _mask_info(table, mpath, palette, strict_k)
            if converter is None or mpath != it.mask:
                continue
            try:
                counts, n_snapped = converter.class_counts(table)
            except UserError as exc:  # a colour mask among grey ones: an encoding outlier
                minfo[mpath]["convert_error"] = str(exc)
                continue
            if any(counts[c] for c in obj_classes):
                index_mask, _ = converter.convert(values, str(mpath))
            else:  # background only: nothing to label
                index_mask = np.zeros(table.shape, np.uint8)
            mrec = measure_mask(index_mask, k, n_snapped, obj_classes, counts)
            for c, a in mrec.areas.items():
                areas[c].append(a)
            mrec.areas = {c: int(a.size) for c, a in mrec.areas.items()}
            mrecs[idx] = mrec
        bar.update()
    bar.close()
    return {"thumbs": thumbs, "recs": recs, "mrecs": mrecs, "errors": errors, "acc": acc,
            "minfo": minfo,
            "areas": {c: (np.concatenate(a) if a else np.zeros(0, np.int64)) for c, a in areas.items()}}


# ----------------------------------------------------------------------------- duplicates
def _split_side(meta: dict | None) -> dict[str, str]:
    side = {}
    split = (meta or {}).get("split")
    if isinstance(split, dict):
        for name, ids in split.items():
            if isinstance(ids, list):
                for i in ids:
                    side.setdefault(str(i), str(name))
    return side


def _refine_shift(ga: np.ndarray, gb: np.ndarray, dy: float, dx: float, radius: int) -> tuple[int, int]:
    """Integer full-resolution shift near ``(dy, dx)`` by phase correlation of the images."""
    from scipy import fft as sfft

    h, w = ga.shape
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    a = (ga - ga.mean()) * win
    b = (gb - gb.mean()) * win
    cross = sfft.rfft2(a, workers=1) * np.conj(sfft.rfft2(b, workers=1))
    cross /= np.maximum(np.abs(cross), 1e-9)
    corr = sfft.irfft2(cross, s=(h, w), workers=1)
    cy, cx = int(round(dy)), int(round(dx))
    best, by, bx = -np.inf, cy, cx
    for y in range(cy - radius, cy + radius + 1):
        for x in range(cx - radius, cx + radius + 1):
            v = corr[y % h, x % w]
            if v > best:
                best, by, bx = v, y, x
    return by, bx


def _overlap(a: np.ndarray, b: np.ndarray, dy: int, dx: int):
    """``a[y, x]`` and ``b[y - dy, x - dx]`` cut to their overlap."""
    h, w = a.shape[:2]
    y0, y1 = max(dy, 0), h + min(dy, 0)
    x0, x1 = max(dx, 0), w + min(dx, 0)
    if y1 <= y0 or x1 <= x0:
        return None, None
    return a[y0:y1, x0:x1], b[y0 - dy:y1 - dy, x0 - dx:x1 - dx]


def _resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.NEAREST))


def _grey_full(path: Path) -> np.ndarray:
    img = read_image(path).astype(np.float32)
    return img.mean(axis=2) if img.shape[2] == 3 else img[:, :, 0]


class _PairJudge:
    """Mask agreement of near-duplicate pairs (full resolution, aligned)."""

    def __init__(self, scan: Scan, res: dict, pal: dict) -> None:
        self.items = scan.items
        self.recs = res["recs"]
        self.mrecs = res["mrecs"]
        self.palette = pal.get("palette")
        self.k = self.palette.n_classes if self.palette is not None else 0
        self.bg = pal.get("background")
        self._shifts: dict[tuple, tuple[int, int]] = {}
        self.mask = lru_cache(maxsize=48)(self._mask)
        self.grey = lru_cache(maxsize=16)(self._grey)

    def _mask(self, i: int) -> np.ndarray | None:
        it = self.items[i]
        if self.palette is None or it.mask is None or self.mrecs[i] is None:
            return None
        try:
            return read_mask(it.mask, self.palette)[0]
        except UserError:
            return None

    def _grey(self, i: int) -> np.ndarray:
        return _grey_full(self.items[i].image)

    def _empty(self, i: int) -> bool | None:
        m = self.mrecs[i]
        if m is None:
            return None
        bgc = 0 if self.bg is None else self.bg
        return int(m.class_counts.sum() - m.class_counts[bgc]) == 0

    def aligned(self, p: dup.Pair):
        """``(mask_a, mask_b in a's frame, shift (dy, dx) full-res)`` or Nones."""
        key = (p.i, p.j, p.flip)
        if key not in self._shifts:
            self._shifts[key] = self._shift(p)
        dy, dx = self._shifts[key]
        ma, mb = self.mask(p.i), self.mask(p.j)
        if ma is None or mb is None:
            return None, None, (dy, dx)
        mb = np.ascontiguousarray(dup.flip_array(mb, p.flip))
        if mb.shape != ma.shape:
            mb = _resize_nearest(mb, ma.shape)
        return ma, mb, (dy, dx)

    def _shift(self, p: dup.Pair) -> tuple[int, int]:
        ra, rb = self.recs[p.i], self.recs[p.j]
        ha, wa = ra.shape
        dy = p.shift[0] * ha / THUMB
        dx = p.shift[1] * wa / THUMB
        same = ra.shape == rb.shape
        if same and (abs(p.shift[0]) > 0.2 or abs(p.shift[1]) > 0.2):
            try:
                gb = np.ascontiguousarray(dup.flip_array(self.grey(p.j), p.flip))
                radius = int(np.ceil(max(ha, wa) / THUMB)) + 1
                dy, dx = _refine_shift(self.grey(p.i), gb, dy, dx, radius)
            except UserError:
                pass
        return int(round(dy)), int(round(dx))

    def judge(self, p: dup.Pair) -> dict:
        ea, eb = self._empty(p.i), self._empty(p.j)
        out = {"a": self.items[p.i].id, "b": self.items[p.j].id, "distance": round(1.0 - p.ncc, 5),
               "ncc": p.ncc, "exact": p.exact, "flip": p.flip or None, "shift_px": [0, 0],
               "dice": None, "empty_a": ea, "empty_b": eb, "conflict": False}
        if ea is None or eb is None:
            return out
        if ea and eb:
            out["dice"] = 1.0
            return out
        ma, mb, (dy, dx) = self.aligned(p)
        out["shift_px"] = [dy, dx]
        if ma is None:
            return out
        oa, ob = _overlap(ma, mb, dy, dx)
        if oa is None:
            return out
        bgc = self.bg if self.bg is not None else None
        dice = image_dice(ob, oa, self.k, background=bgc)
        out["dice"] = round(float(dice), 4)
        out["conflict"] = bool(ea != eb or dice < CONFLICT_DICE)
        return out


def _duplicates(scan: Scan, res: dict, pal: dict, check_flips: bool, progress: bool) -> dict:
    recs = res["recs"]
    n = len(scan.items)
    valid = np.array([r is not None and not r.constant for r in recs], bool)
    digests = [r.digest if r is not None else None for r in recs]
    t0 = time.perf_counter()
    pairs, search = dup.find_pairs(res["thumbs"], valid, digests, check_flips=check_flips)
    t_search = time.perf_counter() - t0
    groups = dup.group_pairs(n, pairs)
    judge = _PairJudge(scan, res, pal)
    sides = _split_side(scan.meta)
    by_group: dict[int, list] = {}
    member_group = {m: g for g, members in enumerate(groups) for m in members}
    bar = _Progress(progress and len(pairs) > 200, len(pairs), "audit: duplicate pairs")
    for p in sorted(pairs, key=lambda p: (p.i, p.j)):
        by_group.setdefault(member_group[p.i], []).append((p, judge.judge(p)))
        bar.update()
    bar.close()
    out_groups = []
    for g, members in enumerate(groups):
        judged = by_group.get(g, [])
        rows = [r for _, r in judged]
        dices = [r["dice"] for r in rows if r["dice"] is not None]
        ids = [scan.items[m].id for m in members]
        side = sorted({sides[i] for i in ids if i in sides})
        conflict_pairs = [r for r in rows if r["conflict"]]
        conflict_ids = sorted({x for r in conflict_pairs for x in (r["a"], r["b"])}, key=natural_key)
        worst = min(judged, key=lambda t: (t[1]["dice"] if t[1]["dice"] is not None else 2.0,
                                          -t[1]["distance"]))
        out_groups.append({
            "id": 0,
            "members": ids,
            "size": len(ids),
            "exact": all(r["exact"] for r in rows),
            "max_distance": max(r["distance"] for r in rows),
            "min_dice": min(dices) if dices else None,
            "conflict": bool(conflict_pairs),
            "conflict_ids": conflict_ids,
            "split_sides": side,
            "leak": len(side) > 1,
            "pairs": sorted(rows, key=lambda r: (r["dice"] if r["dice"] is not None else 2.0))
            [:MAX_PAIRS_PER_GROUP],
            "n_pairs": len(rows),
            "_worst": worst[0],
        })
    out_groups.sort(key=lambda g: (not g["conflict"], not g["leak"],
                                   g["min_dice"] if g["min_dice"] is not None else 2.0,
                                   natural_key(g["members"][0])))
    for i, g in enumerate(out_groups, 1):
        g["id"] = i
    return {"groups": out_groups, "judge": judge, "search_seconds": round(t_search, 2),
            "n_pairs": len(pairs), **search}


# ----------------------------------------------------------------------------- assembly
def _size_table(recs) -> list[dict]:
    sizes = Counter((r.shape[1], r.shape[0]) for r in recs if r is not None)
    return [{"width": w, "height": h, "count": c} for (w, h), c in sizes.most_common()]


def _inventory(scan: Scan, res: dict) -> dict:
    recs = res["recs"]
    ok = [r for r in recs if r is not None]
    mismatches = []
    for it, r in zip(scan.items, recs):
        m = res["minfo"].get(it.mask) if it.mask is not None else None
        if r is not None and m is not None and m["shape"] != r.shape:
            mismatches.append({"id": it.id, "image": relative(it.image, scan.root),
                               "mask": relative(it.mask, scan.root),
                               "image_size": [r.shape[1], r.shape[0]],
                               "mask_size": [m["shape"][1], m["shape"][0]]})
    n_masks = sum(1 for it in scan.items if it.mask is not None) + len(scan.unpaired_masks) + sum(
        len(it.extra_masks) for it in scan.items)
    return {
        "n_images": len(scan.items) + sum(len(p) - 1 for _, p in scan.duplicate_ids),
        "n_image_ids": len(scan.items),
        "n_masks": n_masks,
        "n_pairs": sum(1 for it in scan.items if it.mask is not None),
        "pair_ids": [it.id for it in scan.items if it.mask is not None],
        "n_readable_images": len(ok),
        "formats": dict(Counter(it.image.suffix.lower() for it in scan.items)),
        "mask_formats": dict(Counter(it.mask.suffix.lower() for it in scan.items if it.mask)),
        "sizes": _size_table(recs),
        "channels": dict(Counter(str(r.channels) for r in ok)),
        "dtypes": dict(Counter(r.dtype for r in ok)),
        "grey_stored_as_rgb": sorted((it.id for it, r in zip(scan.items, recs) if r is not None and r.grey_rgb),
                                     key=natural_key),
        "constant_images": [it.id for it, r in zip(scan.items, recs) if r is not None and r.constant],
        "unreadable": [{"file": relative(p, scan.root), "error": e} for p, e in sorted(
            res["errors"].items(), key=lambda t: natural_key(str(t[0])))],
        "unpaired_images": [relative(it.image, scan.root) for it in scan.unpaired_images],
        "unpaired_masks": [relative(p, scan.root) for p in scan.unpaired_masks],
        "multiple_masks": [{"id": it.id, "masks": [relative(m, scan.root) for m in [it.mask] + it.extra_masks]}
                           for it in scan.multi_masks],
        "duplicate_ids": [{"id": i, "files": [relative(p, scan.root) for p in ps]} for i, ps in scan.duplicate_ids],
        "size_mismatches": mismatches,
        "ignored_files": scan.ignored_files,
    }


def _masks_section(scan: Scan, res: dict, pal: dict) -> dict:
    palette: Palette | None = pal.get("palette")
    out: dict = {"encoding": pal.get("encoding"),
                 "encodings": dict(Counter(m["encoding"] for m in res["minfo"].values())),
                 "palette": palette.to_json()["values"] if palette else None,
                 "palette_description": palette.describe() if palette else None,
                 "palette_source": pal.get("palette_source")}
    if palette is None:
        return out
    names, bg, k = pal["names"], pal["background"], palette.n_classes
    out.update(classes=names, background=names[bg] if bg is not None else None)
    mrecs = [m for m in res["mrecs"] if m is not None]
    n = len(mrecs)
    counts = np.sum([m.class_counts for m in mrecs], axis=0) if mrecs else np.zeros(k, np.int64)
    present = np.sum([m.present for m in mrecs], axis=0) if mrecs else np.zeros(k, np.int64)
    total = max(int(counts.sum()), 1)
    bgc = 0 if bg is None else bg
    empty = [it.id for it, m in zip(scan.items, res["mrecs"])
             if m is not None and int(m.class_counts.sum() - m.class_counts[bgc]) == 0]
    out.update(
        n_masks_measured=n,
        class_pixels={names[c]: int(counts[c]) for c in range(k)},
        class_pixel_fraction={names[c]: round(float(counts[c]) / total, 6) for c in range(k)},
        class_image_fraction={names[c]: round(float(present[c]) / max(n, 1), 6) for c in range(k)},
        empty_masks=len(empty), empty_mask_fraction=round(len(empty) / max(n, 1), 6),
        empty_mask_ids=empty[:2000],
        class_weights=class_weights(counts),
        objects={names[c]: object_summary(res["areas"][c], n) for c in sorted(res["areas"])},
    )
    out["recommended_min_object_area"] = {name: o["recommended_min_area"] for name, o in out["objects"].items()}
    # foreground classes present per image (for stratified splits)
    out["image_classes"] = {it.id: [names[c] for c in range(k) if c != bgc and m.class_counts[c] > 0]
                            for it, m in zip(scan.items, res["mrecs"]) if m is not None}
    # off-palette pixels, and masks encoded unlike the others (or holding unknown classes)
    damaged, outliers = [], []
    majority = pal.get("encoding")
    grey_kinds = ("index", "binary_0_255", "grey_levels")
    for it in scan.items:
        m = res["minfo"].get(it.mask) if it.mask is not None else None
        if m is None or "off" not in m:
            continue
        off = m["off"]
        enc = m["encoding"]
        row = {"id": it.id, "mask": relative(it.mask, scan.root), "encoding": enc, "levels": m["levels"],
               "pixels": off["pixels"], "fraction": round(off["pixels"] / max(m["total"], 1), 6),
               "values": off["values"]}
        differs = enc != "empty" and enc != majority and (
            (majority in grey_kinds and (enc in grey_kinds or enc == "rgb")) or
            (majority == "rgb" and bool(off["unknown"])))
        if off["unknown"] or differs or m.get("convert_error"):
            row["unknown_values"] = off["unknown"]
            if m.get("convert_error"):
                row["error"] = m["convert_error"]
            outliers.append(row)
        elif off["pixels"]:
            damaged.append(row)
    damaged.sort(key=lambda r: -r["pixels"])
    out.update(damaged_masks=damaged, damaged_pixels=int(sum(r["pixels"] for r in damaged)),
               mask_outliers=outliers)
    out["multiple_masks"] = [
        {"id": it.id, "masks": [{"mask": relative(mp, scan.root),
                                 "encoding": (res["minfo"].get(mp) or {}).get("encoding")}
                                for mp in [it.mask] + it.extra_masks]}
        for it in scan.multi_masks]
    return out


def _intensity(res: dict) -> dict:
    recs = [r for r in res["recs"] if r is not None]
    colour = any(r.colour for r in recs)
    return res["acc"].summary(colour) if recs else {}


def _findings(audit: dict, scan: Scan) -> list[dict]:
    inv, masks, dups = audit["inventory"], audit["masks"], audit["duplicates"]
    f: list[dict] = list(audit.pop("_early_findings", []))
    if scan.meta_problem:
        f.append(_finding("warning", "dataset_json", scan.meta_problem))
    if inv["unreadable"]:
        rows = inv["unreadable"]
        f.append(_finding("error", "unreadable",
                          f"{_plural(len(rows), 'file')} cannot be read: " +
                          "; ".join(r["error"] for r in rows[:3]) + (" ..." if len(rows) > 3 else ""),
                          [r["file"] for r in rows]))
    if scan.masks_dir is None:
        f.append(_finding("error", "no_masks", f"{scan.images_dir}: no masks found (no masks/ folder "
                                               "and no *_mask files): only images were audited"))
    if inv["unpaired_images"]:
        rows = inv["unpaired_images"]
        f.append(_finding("error", "unpaired_images",
                          f"{_plural(len(rows), 'image has', 'images have')} no mask ({name_list(rows)})", rows))
    if inv["unpaired_masks"]:
        rows = inv["unpaired_masks"]
        f.append(_finding("error", "unpaired_masks",
                          f"{_plural(len(rows), 'mask has', 'masks have')} no image ({name_list(rows)})", rows))
    if inv["multiple_masks"]:
        rows = inv["multiple_masks"]
        ex = rows[0]
        f.append(_finding("error", "multiple_masks",
                          f"{_plural(len(rows), 'image has', 'images have')} several mask files "
                          f"(e.g. {ex['id']}: {', '.join(Path(m).name for m in ex['masks'])}); "
                          "training refuses them: merge each set into one mask (union) or delete the extras",
                          [r["id"] for r in rows]))
    if inv["duplicate_ids"]:
        rows = inv["duplicate_ids"]
        f.append(_finding("error", "duplicate_ids",
                          f"{_plural(len(rows), 'id is', 'ids are')} used by two image files "
                          f"(e.g. {', '.join(Path(p).name for p in rows[0]['files'])})", [r["id"] for r in rows]))
    if inv["size_mismatches"]:
        rows = inv["size_mismatches"]
        r0 = rows[0]
        f.append(_finding("error", "size_mismatch",
                          f"{_plural(len(rows), 'mask differs', 'masks differ')} in size from the image "
                          f"(e.g. {r0['mask']}: {r0['mask_size'][0]}x{r0['mask_size'][1]}, image "
                          f"{r0['image_size'][0]}x{r0['image_size'][1]})", [r["id"] for r in rows]))
    if masks.get("mask_outliers"):
        rows = masks["mask_outliers"]
        r0 = rows[0]
        what = f"{masks.get('encoding')}: {masks.get('palette_description')}"
        extra = f"; values {r0['unknown_values']} are not classes" if r0.get("unknown_values") else ""
        f.append(_finding("error", "mask_values",
                          f"{_plural(len(rows), 'mask is', 'masks are')} encoded unlike the others or "
                          f"{'holds' if len(rows) == 1 else 'hold'} values outside the classes ({what}): "
                          f"e.g. {r0['mask']} is {r0['encoding']} with "
                          f"values {r0['levels']}{extra}; re-export those masks like the rest",
                          [r["id"] for r in rows]))
    groups = dups.get("groups", [])
    conflicts = [g for g in groups if g["conflict"]]
    if conflicts:
        ids = sorted({i for g in conflicts for i in g["conflict_ids"]}, key=natural_key)
        g0 = conflicts[0]
        f.append(_finding("warning", "duplicate_conflicts",
                          f"{_plural(len(conflicts), 'near-duplicate group has', 'near-duplicate groups have')} "
                          f"conflicting masks ({_plural(len(ids), 'image')}; e.g. {', '.join(g0['members'][:4])}: "
                          f"Dice {g0['min_dice']}); `biomedseg split DATA --exclude-conflicts` leaves them out",
                          ids))
    leaks = [g for g in groups if g["leak"]]
    if leaks:
        f.append(_finding("warning", "leakage",
                          f"{_plural(len(leaks), 'near-duplicate group straddles', 'near-duplicate groups straddle')}"
                          f" the dataset.json split (e.g. {', '.join(leaks[0]['members'][:4])} on "
                          f"{' + '.join(leaks[0]['split_sides'])}): test scores are inflated; "
                          "`biomedseg split DATA` keeps groups together", [g["members"][0] for g in leaks]))
    if groups:
        n_img = sum(g["size"] for g in groups)
        exact = sum(1 for g in groups if g["exact"])
        f.append(_finding("warning", "duplicates",
                          f"{_plural(len(groups), 'group')} of near-duplicate images ({_plural(n_img, 'image')}, "
                          f"{exact} pixel-identical); keep each group on one side of the split",
                          [g["members"][0] for g in groups]))
    if masks.get("damaged_masks"):
        rows = masks["damaged_masks"]
        f.append(_finding("warning", "damaged_masks",
                          f"{_plural(len(rows), 'mask has', 'masks have')} {masks['damaged_pixels']} pixels off "
                          f"the palette (JPEG or anti-aliasing damage, e.g. {rows[0]['mask']}: {rows[0]['pixels']}"
                          " px); they are snapped to the nearest class; save masks as PNG",
                          [r["id"] for r in rows]))
    if inv["constant_images"]:
        rows = inv["constant_images"]
        f.append(_finding("warning", "constant_images",
                          f"{_plural(len(rows), 'image is', 'images are')} blank (one value everywhere): "
                          f"{name_list(rows)}", rows))
    if masks.get("classes"):
        frac = masks["class_pixel_fraction"]
        absent = [c for c, v in frac.items() if v == 0]
        if absent and masks.get("n_masks_measured"):
            f.append(_finding("warning", "absent_classes",
                              f"{_plural(len(absent), 'class never appears', 'classes never appear')} in the masks: "
                              f"{', '.join(absent)}", absent))
        ef = masks.get("empty_mask_fraction", 0.0)
        if masks.get("empty_masks"):
            f.append(_finding("warning" if ef >= EMPTY_WARNING else "info", "empty_masks",
                              f"{100 * ef:.1f}% of the masks ({masks['empty_masks']}) are empty (background "
                              "only); with many empty masks use a loss robust to them (e.g. dice+ce) and "
                              "report per-image Dice with the empty-mask convention",
                              masks["empty_mask_ids"], count=masks["empty_masks"]))
        rare = [c for c, v in frac.items() if 0 < v < RARE_CLASS and c != masks.get("background")]
        if rare:
            w = masks["class_weights"]["median"]
            f.append(_finding("info", "rare_classes",
                              f"rare {'class' if len(rare) == 1 else 'classes'} "
                              + ", ".join(f"{c} ({100 * frac[c]:.2f}% of pixels)" for c in rare)
                              + f": consider --class-weights median ({', '.join(f'{v:.3g}' for v in w)})", rare))
        specks = {c: o["specks"] for c, o in masks["objects"].items() if o.get("specks")}
        if specks:
            f.append(_finding("info", "specks",
                              "tiny annotated objects (<= 4 px, annotation specks?): "
                              + ", ".join(f"{c}: {v}" for c, v in specks.items()), list(specks),
                              count=int(sum(specks.values()))))
    if len(inv["sizes"]) > 1:
        top = inv["sizes"][0]
        f.append(_finding("info", "mixed_sizes", f"images come in {len(inv['sizes'])} sizes "
                                                 f"(most common {top['width']}x{top['height']})"))
    if len(inv["channels"]) > 1 or len(inv["dtypes"]) > 1:
        f.append(_finding("info", "mixed_formats",
                          f"images mix channel counts {inv['channels']} / pixel types {inv['dtypes']}"))
    if inv["grey_stored_as_rgb"]:
        rows = inv["grey_stored_as_rgb"]
        f.append(_finding("info", "grey_rgb", f"{_plural(len(rows), 'grey image is', 'grey images are')} "
                                              "stored as RGB (all channels equal); they are read as grey", rows))
    it = audit.get("intensity", {})
    if it.get("effective_bits") and it["effective_bits"] < 16:
        f.append(_finding("info", "bit_depth", f"16-bit images use only {it['uint16_range'][0]}.."
                                               f"{it['uint16_range'][1]} ({it['effective_bits']}-bit data)"))
    f.sort(key=lambda x: SEVERITY_ORDER[x["severity"]])
    return f


def _fingerprint(audit: dict) -> dict:
    inv, masks, it = audit["inventory"], audit["masks"], audit.get("intensity", {})
    sizes = inv["sizes"]
    hs = [s["height"] for s in sizes for _ in range(s["count"])]
    ws = [s["width"] for s in sizes for _ in range(s["count"])]
    fp = {
        "n_images": inv["n_image_ids"],
        "image_sizes": sizes[:50],
        "median_size": [int(np.median(hs)), int(np.median(ws))] if hs else None,
        "min_size": [int(min(hs)), int(min(ws))] if hs else None,
        "channels": it.get("channels"),
        "dtypes": inv["dtypes"],
        "intensity": {k: it.get(k) for k in ("mean", "std", "percentiles", "min", "max")} if it else None,
    }
    if masks.get("classes"):
        fp.update(
            classes=masks["classes"], background_name=masks.get("background"),
            palette=masks["palette"],
            class_pixel_fraction=masks["class_pixel_fraction"],
            class_image_fraction=masks["class_image_fraction"],
            empty_mask_fraction=masks["empty_mask_fraction"],
            object_area={c: {"count": o["count"], **{f"p{k}": v for k, v in o.get("percentiles", {}).items()
                                                      if k in ("5", "50", "95")},
                             "recommended_min_area": o["recommended_min_area"]}
                         for c, o in masks["objects"].items()},
            class_weights=masks["class_weights"],
        )
        # the keys of training.planner.fingerprint_from_samples, so make_plan can take this dict
        # (objects here are 8-connected; the planner's own fingerprint uses 4-connectivity)
        names = masks["classes"]
        fp.update(
            class_names=names,
            class_share=[masks["class_pixel_fraction"][c] for c in names],
            image_share=[masks["class_image_fraction"][c] for c in names],
            object_diameter_p90={c: round(2.0 * float(np.sqrt(o["percentiles"]["90"] / np.pi)), 3)
                                 for c, o in masks["objects"].items() if o.get("count")},
        )
        fp["background"] = names.index(masks["background"]) if masks.get("background") in names else None
    fp["median_shape"] = fp["median_size"]
    fp["min_shape"] = fp["min_size"]
    fp["bit_depth"] = 16 if "uint16" in inv["dtypes"] else 8
    fp["near_duplicate_groups"] = len(audit["duplicates"].get("groups", []))
    return fp


def run_audit(data=None, out=None, images=None, masks=None, check_flips: bool = False,
              progress: bool = True, pictures: bool = True) -> dict:
    """Audit a data set; write ``out/audit.json`` and ``out/audit.html`` when ``out`` is given.

    Args:
        data: DATA folder (``images/``, ``masks/``, optional ``dataset.json``) or a folder of
            images with ``*_mask`` files; ``images``/``masks`` override the folders.
        out: report folder (``None``: nothing is written, the dict is only returned).
        check_flips: also find duplicates that are flipped copies (left-right / up-down).
        progress: show progress bars on stderr.
        pictures: draw PNG pictures for the HTML page (plots, duplicate pairs, bad masks).

    Returns:
        The audit dict (see ``docs`` / ``audit.json``): ``inventory``, ``masks``,
        ``intensity``, ``duplicates``, ``findings`` (most serious first), ``fingerprint``.

    Raises:
        UserError: a given folder is missing or holds no image at all.
    """
    t_start = time.perf_counter()
    scan = scan_data(data, images, masks)
    early: list[dict] = []
    pal = _choose_palette(scan, _sample_pass(scan), early)
    t_masks = time.perf_counter()
    res = _image_pass(scan, pal, progress)
    t_images = time.perf_counter()
    dups = _duplicates(scan, res, pal, check_flips, progress)
    t_dups = time.perf_counter()
    audit: dict = {
        "version": AUDIT_VERSION,
        "data": {"root": str(scan.root), "images": str(scan.images_dir),
                 "masks": str(scan.masks_dir) if scan.masks_dir else None,
                 "dataset_json": scan.meta is not None},
        "settings": {"check_flips": bool(check_flips), "conflict_dice": CONFLICT_DICE,
                     "duplicate_threshold": dup.THRESHOLD, "thumbnail": THUMB},
        "inventory": _inventory(scan, res),
        "masks": _masks_section(scan, res, pal),
        "intensity": _intensity(res),
        "duplicates": {
            "n_groups": len(dups["groups"]),
            "n_images": sum(g["size"] for g in dups["groups"]),
            "n_conflicting_groups": sum(1 for g in dups["groups"] if g["conflict"]),
            "n_leaking_groups": sum(1 for g in dups["groups"] if g["leak"]),
            "n_candidates": dups.get("candidates", 0),
            "n_pairs": dups["n_pairs"],
            "threshold": dups.get("threshold"),
            "baseline_distance": dups.get("baseline_distance"),
            "conflict_ids": sorted({i for g in dups["groups"] for i in g["conflict_ids"]}, key=natural_key),
            "groups": dups["groups"],
        },
        "_early_findings": early,
    }
    audit["findings"] = _findings(audit, scan)
    audit["fingerprint"] = _fingerprint(audit)
    audit["timing"] = {"palette_s": round(t_masks - t_start, 2), "images_s": round(t_images - t_masks, 2),
                       "duplicates_s": round(t_dups - t_images, 2)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if pictures:
            from biomedseg.reports.audit_html import draw_pictures

            audit["pictures"] = draw_pictures(out, audit, scan, res, dups, pal)
        from biomedseg.reports.audit_html import write_audit_html

        audit["timing"]["total_s"] = round(time.perf_counter() - t_start, 2)
        write_json(out / "audit.json", _public(audit))
        write_audit_html(out, _public(audit))
    else:
        audit["timing"]["total_s"] = round(time.perf_counter() - t_start, 2)
    return _public(audit)


def _public(audit: dict) -> dict:
    """The audit without internal objects (``_worst`` pair handles)."""
    clean = dict(audit)
    dups = dict(clean["duplicates"])
    dups["groups"] = [{k: v for k, v in g.items() if not k.startswith("_")} for g in dups["groups"]]
    clean["duplicates"] = dups
    clean.pop("_early_findings", None)
    return clean


def format_audit_summary(audit: dict, limit: int = 12) -> str:
    """A short text summary: what was found, then the problems, most serious first."""
    inv, masks, it = audit["inventory"], audit.get("masks", {}), audit.get("intensity", {})
    lines = [f"audit of {audit['data']['root']}: {inv['n_image_ids']} images, {inv['n_masks']} masks, "
             f"{inv['n_pairs']} pairs"]
    if masks.get("classes"):
        shares = ", ".join(f"{c} {v:.3f}" for c, v in masks["class_pixel_fraction"].items())
        lines.append(f"  masks: {masks.get('encoding')} ({masks.get('palette_description')}); "
                     f"pixel share {shares}; empty masks {100 * masks.get('empty_mask_fraction', 0):.1f}%")
    if it:
        lines.append("  intensity: mean " + ", ".join(f"{v:.4g}" for v in it["mean"]) + "; std "
                     + ", ".join(f"{v:.4g}" for v in it["std"]) + f" ({', '.join(it['channel_names'])})")
    if masks.get("recommended_min_object_area"):
        shown = {c: a for c, a in masks["recommended_min_object_area"].items() if a}
        if shown:
            lines.append("  min object area: " + ", ".join(f"{c} {a} px" for c, a in shown.items()))
    findings = audit.get("findings", [])
    if not findings:
        lines.append("no problems found")
    else:
        n_err = sum(1 for f in findings if f["severity"] == "error")
        n_warn = sum(1 for f in findings if f["severity"] == "warning")
        lines.append(f"problems: {n_err} errors, {n_warn} warnings (most serious first)")
        for f in findings[:limit]:
            lines.append(f"  {f['severity'].upper():7s} {f['message']}")
        if len(findings) > limit:
            lines.append(f"  ... and {len(findings) - limit} more in audit.json")
    return "\n".join(lines)
