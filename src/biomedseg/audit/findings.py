"""Findings of the data audit: the problems it reports, most serious first.

A finding is a dict ``{"severity": "error" | "warning" | "info", "code", "message", "count",
"items" (at most 200)}``; :func:`audit_findings` derives them from the sections of an audit.
"""

from __future__ import annotations

from pathlib import Path

from biomedseg.data.discovery import name_list, natural_key
from biomedseg.data.inventory import Scan

#: Share of empty masks above which empty masks are a warning (else info).
EMPTY_WARNING = 0.10
#: Class pixel share below which a class is called rare.
RARE_CLASS = 0.01
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def plural(n: int, one: str, many: str | None = None) -> str:
    """``"1 file"`` / ``"3 files"`` (``many`` defaults to ``one + "s"``)."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def finding(severity: str, code: str, message: str, items: list | None = None, count: int | None = None) -> dict:
    """One finding; ``count`` defaults to the number of ``items`` (1 without items)."""
    return {
        "severity": severity,
        "code": code,
        "message": message,
        "count": count if count is not None else (len(items) if items is not None else 1),
        "items": (items or [])[:200],
    }


def audit_findings(audit: dict, scan: Scan) -> list[dict]:
    """All findings of ``audit`` (sections ``inventory``, ``masks``, ``duplicates``,
    ``intensity``), most serious first; takes the ``_early_findings`` out of ``audit``."""
    inv, masks, dups = audit["inventory"], audit["masks"], audit["duplicates"]
    f: list[dict] = list(audit.pop("_early_findings", []))
    f += _file_findings(inv, scan)
    f += _mask_value_findings(masks)
    f += _duplicate_findings(dups.get("groups", []))
    f += _damage_findings(inv, masks)
    if masks.get("classes"):
        f += _class_findings(masks)
    if masks.get("unlabelled"):
        f += _partial_label_findings(masks["unlabelled"])
    f += _format_findings(inv, audit.get("intensity", {}))
    f += _pixel_size_findings(inv.get("pixel_size") or {})
    f.sort(key=lambda x: SEVERITY_ORDER[x["severity"]])
    return f


def _about(rows: list | None, severity: str, code: str, message, items=None) -> list[dict]:
    """``[finding]`` about ``rows`` when there are any (else ``[]``): ``message(rows)`` is its
    text, ``items(rows)`` its items (default: the rows themselves)."""
    if not rows:
        return []
    return [finding(severity, code, message(rows), items(rows) if items else rows)]


def _ids(rows: list[dict]) -> list[str]:
    return [r["id"] for r in rows]


def _file_findings(inv: dict, scan: Scan) -> list[dict]:
    """dataset.json, unreadable, unpaired, several masks, duplicate ids, size mismatches."""
    f: list[dict] = []
    if scan.meta_problem:
        f.append(finding("warning", "dataset_json", scan.meta_problem))
    f += _about(
        inv["unreadable"],
        "error",
        "unreadable",
        lambda rows: (
            f"{plural(len(rows), 'file')} cannot be read: "
            + "; ".join(r["error"] for r in rows[:3])
            + (" ..." if len(rows) > 3 else "")
        ),
        lambda rows: [r["file"] for r in rows],
    )
    if scan.masks_dir is None:
        f.append(
            finding(
                "error",
                "no_masks",
                f"{scan.images_dir}: no masks found (no masks/ folder and no *_mask files): only images were audited",
            )
        )
    f += _about(
        inv["unpaired_images"],
        "error",
        "unpaired_images",
        lambda rows: f"{plural(len(rows), 'image has', 'images have')} no mask ({name_list(rows)})",
    )
    f += _about(
        inv["unpaired_masks"],
        "error",
        "unpaired_masks",
        lambda rows: f"{plural(len(rows), 'mask has', 'masks have')} no image ({name_list(rows)})",
    )
    f += _about(
        inv["multiple_masks"],
        "error",
        "multiple_masks",
        lambda rows: (
            f"{plural(len(rows), 'image has', 'images have')} several mask files "
            f"(e.g. {rows[0]['id']}: {', '.join(Path(m).name for m in rows[0]['masks'])}); "
            "training refuses them: merge each set into one mask (union) or delete the extras"
        ),
        _ids,
    )
    f += _about(
        inv["duplicate_ids"],
        "error",
        "duplicate_ids",
        lambda rows: (
            f"{plural(len(rows), 'id is', 'ids are')} used by two image files "
            f"(e.g. {', '.join(Path(p).name for p in rows[0]['files'])})"
        ),
        _ids,
    )
    f += _about(
        inv["size_mismatches"],
        "error",
        "size_mismatch",
        lambda rows: (
            f"{plural(len(rows), 'mask differs', 'masks differ')} in size from the image "
            f"(e.g. {rows[0]['mask']}: {rows[0]['mask_size'][0]}x{rows[0]['mask_size'][1]}, image "
            f"{rows[0]['image_size'][0]}x{rows[0]['image_size'][1]})"
        ),
        _ids,
    )
    return f


def _mask_value_findings(masks: dict) -> list[dict]:
    """Masks encoded unlike the others or holding values that are no class."""
    if not masks.get("mask_outliers"):
        return []
    rows = masks["mask_outliers"]
    r0 = rows[0]
    what = f"{masks.get('encoding')}: {masks.get('palette_description')}"
    extra = f"; values {r0['unknown_values']} are not classes" if r0.get("unknown_values") else ""
    return [
        finding(
            "error",
            "mask_values",
            f"{plural(len(rows), 'mask is', 'masks are')} encoded unlike the others or "
            f"{'holds' if len(rows) == 1 else 'hold'} values outside the classes ({what}): "
            f"e.g. {r0['mask']} is {r0['encoding']} with "
            f"values {r0['levels']}{extra}; re-export those masks like the rest",
            [r["id"] for r in rows],
        )
    ]


def _duplicate_findings(groups: list[dict]) -> list[dict]:
    """Near-duplicate groups: conflicting masks, leakage over the split, the groups."""
    f: list[dict] = []
    conflicts = [g for g in groups if g["conflict"]]
    if conflicts:
        ids = sorted({i for g in conflicts for i in g["conflict_ids"]}, key=natural_key)
        g0 = conflicts[0]
        f.append(
            finding(
                "warning",
                "duplicate_conflicts",
                f"{plural(len(conflicts), 'near-duplicate group has', 'near-duplicate groups have')} "
                f"conflicting masks ({plural(len(ids), 'image')}; e.g. {', '.join(g0['members'][:4])}: "
                f"Dice {g0['min_dice']}); `biomedseg split DATA --exclude-conflicts` leaves them out",
                ids,
            )
        )
    leaks = [g for g in groups if g["leak"]]
    if leaks:
        f.append(
            finding(
                "warning",
                "leakage",
                f"{plural(len(leaks), 'near-duplicate group straddles', 'near-duplicate groups straddle')}"
                f" the dataset.json split (e.g. {', '.join(leaks[0]['members'][:4])} on "
                f"{' + '.join(leaks[0]['split_sides'])}): test scores are inflated; "
                "`biomedseg split DATA` keeps groups together",
                [g["members"][0] for g in leaks],
            )
        )
    if groups:
        n_img = sum(g["size"] for g in groups)
        exact = sum(1 for g in groups if g["exact"])
        f.append(
            finding(
                "warning",
                "duplicates",
                f"{plural(len(groups), 'group')} of near-duplicate images ({plural(n_img, 'image')}, "
                f"{exact} pixel-identical); keep each group on one side of the split",
                [g["members"][0] for g in groups],
            )
        )
    return f


def _damage_findings(inv: dict, masks: dict) -> list[dict]:
    """Masks with off-palette pixels and blank images."""
    f = _about(
        masks.get("damaged_masks"),
        "warning",
        "damaged_masks",
        lambda rows: (
            f"{plural(len(rows), 'mask has', 'masks have')} {masks['damaged_pixels']} pixels off "
            f"the palette (JPEG or anti-aliasing damage, e.g. {rows[0]['mask']}: {rows[0]['pixels']}"
            " px); they are snapped to the nearest class; save masks as PNG"
        ),
        _ids,
    )
    f += _about(
        inv["constant_images"],
        "warning",
        "constant_images",
        lambda rows: f"{plural(len(rows), 'image is', 'images are')} blank (one value everywhere): {name_list(rows)}",
    )
    return f


def _class_findings(masks: dict) -> list[dict]:
    """Absent classes, empty masks, rare classes, annotation specks."""
    f: list[dict] = []
    frac = masks["class_pixel_fraction"]
    absent = [c for c, v in frac.items() if v == 0]
    if absent and masks.get("n_masks_measured"):
        f.append(
            finding(
                "warning",
                "absent_classes",
                f"{plural(len(absent), 'class never appears', 'classes never appear')} in the masks: "
                f"{', '.join(absent)}",
                absent,
            )
        )
    ef = masks.get("empty_mask_fraction", 0.0)
    if masks.get("empty_masks"):
        f.append(
            finding(
                "warning" if ef >= EMPTY_WARNING else "info",
                "empty_masks",
                f"{100 * ef:.1f}% of the masks ({masks['empty_masks']}) are empty (background "
                "only); with many empty masks use a loss robust to them (e.g. dice+ce) and "
                "report per-image Dice with the empty-mask convention",
                masks["empty_mask_ids"],
                count=masks["empty_masks"],
            )
        )
    rare = [c for c, v in frac.items() if 0 < v < RARE_CLASS and c != masks.get("background")]
    if rare:
        w = masks["class_weights"]["median"]
        f.append(
            finding(
                "info",
                "rare_classes",
                f"rare {'class' if len(rare) == 1 else 'classes'} "
                + ", ".join(f"{c} ({100 * frac[c]:.2f}% of pixels)" for c in rare)
                + f": consider --class-weights median ({', '.join(f'{v:.3g}' for v in w)})",
                rare,
            )
        )
    specks = {c: o["specks"] for c, o in masks["objects"].items() if o.get("specks")}
    if specks:
        f.append(
            finding(
                "info",
                "specks",
                "tiny annotated objects (<= 4 px, annotation specks?): "
                + ", ".join(f"{c}: {v}" for c, v in specks.items()),
                list(specks),
                count=int(sum(specks.values())),
            )
        )
    return f


def _partial_label_findings(u: dict) -> list[dict]:
    """Which value means unlabelled and why, how much is labelled, masks with nothing labelled, classes
    that only partly labelled masks hold."""
    f = [
        finding(
            "info",
            "partial_labels",
            f"value {u['value']} is taken as unlabelled ({u['reason']}); {100 * u['labelled_fraction']:.1f}% of "
            f"the mask pixels are labelled, {u['partial_masks']} masks partly; unlabelled pixels count in no "
            "loss, metric or statistic",
        )
    ]
    if u["fully_unlabelled"]:
        f.append(
            finding(
                "warning",
                "fully_unlabelled_masks",
                f"{plural(len(u['fully_unlabelled']), 'mask is', 'masks are')} entirely unlabelled: training "
                "refuses them (label some pixels or leave the images out)",
                u["fully_unlabelled"],
            )
        )
    if u["classes_only_in_partial_masks"]:
        f.append(
            finding(
                "info",
                "classes_only_partial",
                "classes met only in partly labelled masks (their share and sizes are estimates): "
                + ", ".join(u["classes_only_in_partial_masks"]),
                u["classes_only_in_partial_masks"],
            )
        )
    return f


def _format_findings(inv: dict, intensity: dict) -> list[dict]:
    """Mixed sizes / channels / pixel types, grey stored as RGB, unused 16-bit range."""
    f: list[dict] = []
    if len(inv["sizes"]) > 1:
        top = inv["sizes"][0]
        f.append(
            finding(
                "info",
                "mixed_sizes",
                f"images come in {len(inv['sizes'])} sizes (most common {top['width']}x{top['height']})",
            )
        )
    if len(inv["channels"]) > 1 or len(inv["dtypes"]) > 1:
        f.append(
            finding(
                "info", "mixed_formats", f"images mix channel counts {inv['channels']} / pixel types {inv['dtypes']}"
            )
        )
    if inv["grey_stored_as_rgb"]:
        rows = inv["grey_stored_as_rgb"]
        f.append(
            finding(
                "info",
                "grey_rgb",
                f"{plural(len(rows), 'grey image is', 'grey images are')} "
                "stored as RGB (all channels equal); they are read as grey",
                rows,
            )
        )
    bits = intensity.get("effective_bits")
    if bits and bits < 16:
        lo, hi = intensity["uint16_range"]
        f.append(finding("info", "bit_depth", f"16-bit images use only {lo}..{hi} ({bits}-bit data)"))
    return f


def _pixel_size_findings(px: dict) -> list[dict]:
    """Mixed physical pixel sizes, sizes known for only some images, a malformed dataset.json value."""
    f: list[dict] = []
    if px.get("problem"):
        f.append(finding("warning", "dataset_json", f"{px['problem']}; the files' own pixel sizes are used"))
    if px.get("mixed"):
        top = px["values"][0]["pixel_size"]
        odd = [i for i, v in px["per_image"].items() if v != top]
        shown = " / ".join(f"{r['pixel_size'][0]:g} x {r['pixel_size'][1]:g}" for r in px["values"][:4])
        f.append(
            finding(
                "warning",
                "mixed_pixel_sizes",
                (
                    f"images come in {len(px['values'])} physical pixel sizes ({shown} µm; "
                    f"{plural(len(odd), 'image differs', 'images differ')} from the most common "
                    f"{top[0]:g} x {top[1]:g} µm): objects appear at different scales; resample them to one "
                    "pixel size"
                ),
                sorted(odd, key=natural_key),
            )
        )
    if px.get("known") and px.get("unknown"):
        f.append(
            finding(
                "info",
                "pixel_size_unknown",
                (
                    f"{plural(px['unknown'], 'image states', 'images state')} no physical pixel size while "
                    f"{px['known']} do; give it in dataset.json (pixel_size)"
                ),
                count=px["unknown"],
            )
        )
    return f
