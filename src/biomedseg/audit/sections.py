"""Sections of the audit dict built from the passes: ``inventory``, ``masks``, ``intensity``,
``duplicates`` and the planning ``fingerprint``.

``res`` is the result of :func:`biomedseg.audit.passes.measure_dataset`, ``pal`` that of
:func:`biomedseg.audit.passes.choose_palette`, ``dups`` that of
:func:`biomedseg.audit.duplicate_groups.find_duplicate_groups`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from biomedseg.audit.fingerprint import class_weights, object_summary
from biomedseg.data.discovery import natural_key
from biomedseg.data.inventory import Scan, relative
from biomedseg.io.masks import Palette
from biomedseg.io.pixel_size import summarize_pixel_sizes

_GREY_ENCODINGS = ("index", "binary_0_255", "grey_levels")


# ----------------------------------------------------------------------------- inventory
def size_table(recs) -> list[dict]:
    """``[{"width", "height", "count"}]`` of the readable images, most common size first."""
    sizes = Counter((r.shape[1], r.shape[0]) for r in recs if r is not None)
    return [{"width": w, "height": h, "count": c} for (w, h), c in sizes.most_common()]


def _size_mismatches(scan: Scan, res: dict) -> list[dict]:
    mismatches = []
    for it, r in zip(scan.items, res["recs"]):
        m = res["minfo"].get(it.mask) if it.mask is not None else None
        if r is not None and m is not None and m["shape"] != r.shape:
            mismatches.append(
                {
                    "id": it.id,
                    "image": relative(it.image, scan.root),
                    "mask": relative(it.mask, scan.root),
                    "image_size": [r.shape[1], r.shape[0]],
                    "mask_size": [m["shape"][1], m["shape"][0]],
                }
            )
    return mismatches


def inventory_section(scan: Scan, res: dict) -> dict:
    """Counts, formats, sizes, channels, pixel types and file problems (audit ``inventory``)."""
    recs = res["recs"]
    ok = [r for r in recs if r is not None]
    n_masks = (
        sum(1 for it in scan.items if it.mask is not None)
        + len(scan.unpaired_masks)
        + sum(len(it.extra_masks) for it in scan.items)
    )
    return {
        "n_images": len(scan.items) + sum(len(p) - 1 for _, p in scan.duplicate_ids),
        "n_image_ids": len(scan.items),
        "n_masks": n_masks,
        "n_pairs": sum(1 for it in scan.items if it.mask is not None),
        "pair_ids": [it.id for it in scan.items if it.mask is not None],
        "n_readable_images": len(ok),
        "formats": dict(Counter(it.image.suffix.lower() for it in scan.items)),
        "mask_formats": dict(Counter(it.mask.suffix.lower() for it in scan.items if it.mask)),
        "sizes": size_table(recs),
        "channels": dict(Counter(str(r.channels) for r in ok)),
        "dtypes": dict(Counter(r.dtype for r in ok)),
        "grey_stored_as_rgb": sorted(
            (it.id for it, r in zip(scan.items, recs) if r is not None and r.grey_rgb), key=natural_key
        ),
        "constant_images": [it.id for it, r in zip(scan.items, recs) if r is not None and r.constant],
        "unreadable": [
            {"file": relative(p, scan.root), "error": e}
            for p, e in sorted(res["errors"].items(), key=lambda t: natural_key(str(t[0])))
        ],
        "unpaired_images": [relative(it.image, scan.root) for it in scan.unpaired_images],
        "unpaired_masks": [relative(p, scan.root) for p in scan.unpaired_masks],
        "multiple_masks": [
            {"id": it.id, "masks": [relative(m, scan.root) for m in [it.mask] + it.extra_masks]}
            for it in scan.multi_masks
        ],
        "duplicate_ids": [{"id": i, "files": [relative(p, scan.root) for p in ps]} for i, ps in scan.duplicate_ids],
        "size_mismatches": _size_mismatches(scan, res),
        "ignored_files": scan.ignored_files,
        "pixel_size": pixel_size_section(scan, res.get("pixel_sizes")),
    }


def pixel_size_section(scan: Scan, px: dict | None) -> dict:
    """Physical pixel sizes (µm): :func:`~biomedseg.io.pixel_size.summarize_pixel_sizes` plus
    ``per_image`` (``{id: [y, x]}`` of the images with one), ``sources`` and ``problem``."""
    sizes = (px or {}).get("sizes") or [None] * len(scan.items)
    sources = Counter(s for s in (px or {}).get("sources", []) if s)
    return {
        "unit": "µm",
        **summarize_pixel_sizes(sizes),
        "per_image": {it.id: list(s) for it, s in zip(scan.items, sizes) if s is not None},
        "sources": dict(sources),
        "problem": (px or {}).get("problem"),
    }


def describe_pixel_sizes(section: dict) -> str:
    """``"0.5 x 0.5 µm (10 images), 0.25 x 0.25 µm (2 images); unknown for 3"`` (y x x)."""
    shown = ", ".join(
        f"{v['pixel_size'][0]:g} x {v['pixel_size'][1]:g} µm ({v['count']} image{'s' if v['count'] != 1 else ''})"
        for v in section.get("values", [])[:4]
    )
    more = len(section.get("values", [])) - 4
    shown += f" and {more} more" if more > 0 else ""
    unknown = section.get("unknown", 0)
    return (shown or "unknown") + (f"; unknown for {unknown}" if unknown and shown else "")


# ----------------------------------------------------------------------------- masks
def _class_statistics(scan: Scan, res: dict, names: list[str], bg: int | None, k: int) -> dict:
    """Pixel/image shares, empty masks, class weights, objects and classes per image."""
    mrecs = [m for m in res["mrecs"] if m is not None]
    n = len(mrecs)
    counts = np.sum([m.class_counts for m in mrecs], axis=0) if mrecs else np.zeros(k, np.int64)
    present = np.sum([m.present for m in mrecs], axis=0) if mrecs else np.zeros(k, np.int64)
    total = max(int(counts.sum()), 1)
    bgc = 0 if bg is None else bg
    empty = [
        it.id
        for it, m in zip(scan.items, res["mrecs"])
        if m is not None
        and int(m.class_counts.sum() - m.class_counts[bgc]) == 0
        and not (m.unlabelled and not m.class_counts.sum())
    ]  # an all-unlabelled mask is not "empty"
    out = dict(
        n_masks_measured=n,
        class_pixels={names[c]: int(counts[c]) for c in range(k)},
        class_pixel_fraction={names[c]: round(float(counts[c]) / total, 6) for c in range(k)},
        class_image_fraction={names[c]: round(float(present[c]) / max(n, 1), 6) for c in range(k)},
        empty_masks=len(empty),
        empty_mask_fraction=round(len(empty) / max(n, 1), 6),
        empty_mask_ids=empty[:2000],
        class_weights=class_weights(counts),
        objects={names[c]: object_summary(res["areas"][c], n) for c in sorted(res["areas"])},
    )
    out["recommended_min_object_area"] = {name: o["recommended_min_area"] for name, o in out["objects"].items()}
    # foreground classes present per image (for stratified splits)
    out["image_classes"] = {
        it.id: [names[c] for c in range(k) if c != bgc and m.class_counts[c] > 0]
        for it, m in zip(scan.items, res["mrecs"])
        if m is not None
    }
    return out


def _mask_problems(scan: Scan, res: dict, majority: str | None) -> tuple[list[dict], list[dict]]:
    """``(damaged masks (most off-palette pixels first), masks encoded unlike the others or
    holding unknown classes)``."""
    damaged, outliers = [], []
    for it in scan.items:
        m = res["minfo"].get(it.mask) if it.mask is not None else None
        if m is None or "off" not in m:
            continue
        off = m["off"]
        enc = m["encoding"]
        row = {
            "id": it.id,
            "mask": relative(it.mask, scan.root),
            "encoding": enc,
            "levels": m["levels"],
            "pixels": off["pixels"],
            "fraction": round(off["pixels"] / max(m["total"], 1), 6),
            "values": off["values"],
        }
        differs = (
            enc != "empty"
            and enc != majority
            and (
                (majority in _GREY_ENCODINGS and (enc in _GREY_ENCODINGS or enc == "rgb"))
                or (majority == "rgb" and bool(off["unknown"]))
            )
        )
        if off["unknown"] or differs or m.get("convert_error"):
            row["unknown_values"] = off["unknown"]
            if m.get("convert_error"):
                row["error"] = m["convert_error"]
            outliers.append(row)
        elif off["pixels"]:
            damaged.append(row)
    damaged.sort(key=lambda r: -r["pixels"])
    return damaged, outliers


def unlabelled_section(scan: Scan, res: dict, names: list[str], pal: dict) -> dict:
    """Partial labels: the unlabelled value and why, the labelled fraction of the mask pixels, masks that
    are partly or entirely unlabelled, and classes met only in partly labelled masks."""
    rows = [(it, m) for it, m in zip(scan.items, res["mrecs"]) if m is not None]
    labelled = sum(int(m.class_counts.sum()) for _, m in rows)
    unlabelled = sum(int(m.unlabelled) for _, m in rows)
    partial = [m for _, m in rows if m.unlabelled and m.class_counts.sum()]
    complete_classes = {c for _, m in rows if not m.unlabelled for c in np.flatnonzero(m.class_counts)}
    only_partial = [
        names[c] for c in range(len(names)) if c not in complete_classes and any(m.class_counts[c] for m in partial)
    ]
    ignore = pal["ignore"]
    return {
        "value": ignore[0] if len(set(ignore)) == 1 else list(ignore),
        "reason": pal.get("ignore_reason"),
        "labelled_fraction": round(labelled / max(labelled + unlabelled, 1), 6),
        "partial_masks": len(partial),
        "fully_unlabelled": [it.id for it, m in rows if m.unlabelled and not m.class_counts.sum()],
        "classes_only_in_partial_masks": only_partial,
    }


def masks_section(scan: Scan, res: dict, pal: dict) -> dict:
    """Encoding, palette, class statistics, objects and mask problems (audit ``masks``)."""
    palette: Palette | None = pal.get("palette")
    out: dict = {
        "encoding": pal.get("encoding"),
        "encodings": dict(Counter(m["encoding"] for m in res["minfo"].values())),
        "palette": palette.to_json()["values"] if palette else None,
        "palette_description": palette.describe() if palette else None,
        "palette_source": pal.get("palette_source"),
    }
    if palette is None:
        return out
    names, bg = pal["names"], pal["background"]
    out.update(classes=names, background=names[bg] if bg is not None else None)
    out.update(_class_statistics(scan, res, names, bg, palette.n_classes))
    if pal.get("ignore") is not None:
        out["unlabelled"] = unlabelled_section(scan, res, names, pal)
    # off-palette pixels, and masks encoded unlike the others (or holding unknown classes)
    damaged, outliers = _mask_problems(scan, res, pal.get("encoding"))
    out.update(damaged_masks=damaged, damaged_pixels=int(sum(r["pixels"] for r in damaged)), mask_outliers=outliers)
    out["multiple_masks"] = [
        {
            "id": it.id,
            "masks": [
                {"mask": relative(mp, scan.root), "encoding": (res["minfo"].get(mp) or {}).get("encoding")}
                for mp in [it.mask] + it.extra_masks
            ],
        }
        for it in scan.multi_masks
    ]
    return out


# ----------------------------------------------------------------------------- intensity, duplicates
def intensity_section(res: dict) -> dict:
    """Per-channel statistics in the layout training uses (audit ``intensity``; ``{}`` without
    readable images)."""
    recs = [r for r in res["recs"] if r is not None]
    colour = any(r.colour for r in recs)
    return res["acc"].summary(colour) if recs else {}


def duplicates_section(dups: dict) -> dict:
    """Counts, thresholds, conflicting ids and groups (audit ``duplicates``)."""
    groups = dups["groups"]
    return {
        "n_groups": len(groups),
        "n_images": sum(g["size"] for g in groups),
        "n_conflicting_groups": sum(1 for g in groups if g["conflict"]),
        "n_leaking_groups": sum(1 for g in groups if g["leak"]),
        "n_candidates": dups.get("candidates", 0),
        "n_pairs": dups["n_pairs"],
        "threshold": dups.get("threshold"),
        "baseline_distance": dups.get("baseline_distance"),
        "conflict_ids": sorted({i for g in groups for i in g["conflict_ids"]}, key=natural_key),
        "groups": groups,
    }


# ----------------------------------------------------------------------------- fingerprint
def _class_fingerprint(masks: dict) -> dict:
    """Class part of the fingerprint, with the keys of ``training.planner.fingerprint_from_samples``."""
    fp = dict(
        classes=masks["classes"],
        background_name=masks.get("background"),
        palette=masks["palette"],
        class_pixel_fraction=masks["class_pixel_fraction"],
        class_image_fraction=masks["class_image_fraction"],
        empty_mask_fraction=masks["empty_mask_fraction"],
        object_area={
            c: {
                "count": o["count"],
                **{f"p{k}": v for k, v in o.get("percentiles", {}).items() if k in ("5", "50", "95")},
                "recommended_min_area": o["recommended_min_area"],
            }
            for c, o in masks["objects"].items()
        },
        class_weights=masks["class_weights"],
    )
    # the keys of training.planner.fingerprint_from_samples, so make_plan can take this dict
    # (objects here are 8-connected; the planner's own fingerprint uses 4-connectivity)
    names = masks["classes"]
    fp.update(
        class_names=names,
        class_share=[masks["class_pixel_fraction"][c] for c in names],
        image_share=[masks["class_image_fraction"][c] for c in names],
        object_diameter_p90={
            c: round(2.0 * float(np.sqrt(o["percentiles"]["90"] / np.pi)), 3)
            for c, o in masks["objects"].items()
            if o.get("count")
        },
    )
    fp["background"] = names.index(masks["background"]) if masks.get("background") in names else None
    return fp


def fingerprint_section(audit: dict) -> dict:
    """The subset planning needs: sizes, channels, intensities, class shares, object sizes,
    class weights (audit ``fingerprint``)."""
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
    if (inv.get("pixel_size") or {}).get("median"):
        fp["pixel_size"] = inv["pixel_size"]["median"]  # (y, x) µm, as training.planner's
    if masks.get("classes"):
        fp.update(_class_fingerprint(masks))
    fp["median_shape"] = fp["median_size"]
    fp["min_shape"] = fp["min_size"]
    fp["bit_depth"] = 16 if "uint16" in inv["dtypes"] else 8
    fp["near_duplicate_groups"] = len(audit["duplicates"].get("groups", []))
    return fp
