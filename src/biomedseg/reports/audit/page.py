"""The static HTML page of the data audit (``audit.html``).

The page needs no network: no external CSS/JS, pictures are PNG files in ``audit_files/`` next
to it linked by relative URLs, and every piece of text (file names included) is escaped.
The pictures are drawn by :mod:`biomedseg.reports.audit.pictures` (:func:`draw_pictures`,
re-exported here) and :mod:`biomedseg.reports.audit.plots`; this module assembles the page.
:func:`audit_with_report` runs the audit (:mod:`biomedseg.audit.run`, which returns plain data
and writes ``audit.json``) and then writes this page and its pictures: ``biomedseg audit``.
"""

from __future__ import annotations

import html
import math
import numbers
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from biomedseg.audit.sections import describe_pixel_sizes
from biomedseg.io.writers import write_text
from biomedseg.reports.audit.pictures import MAX_MASK_PICTURES, PANEL_HEIGHT, PICTURE_DIR, draw_pictures  # noqa: F401 - MAX_MASK_PICTURES, PANEL_HEIGHT re-exported
from biomedseg.reports.style import CSS as _CSS

__all__ = ["audit_with_report", "draw_pictures", "write_audit_html", "write_audit_report", "PICTURE_DIR"]


# ----------------------------------------------------------------------------- HTML
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _url(rel: str) -> str:
    return _esc(quote(rel))


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        return "n/a" if not math.isfinite(f) else (f"{f:.4g}" if abs(f) < 1e5 else f"{f:.0f}")
    if isinstance(v, (list, tuple)):
        return _esc(", ".join(str(x) for x in v))
    return _esc(v)


def _td(v: Any) -> str:
    cls = ' class="num"' if isinstance(v, numbers.Number) and not isinstance(v, bool) else ""
    return f"<td{cls}>{_fmt(v)}</td>"


def _table(head: list[str], rows: list[list[Any]], row_class: list[str] | None = None) -> str:
    h = "<tr>" + "".join(f"<th>{_esc(x)}</th>" for x in head) + "</tr>"
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{_esc(row_class[i])}"' if row_class and row_class[i] else ""
        body.append(f"<tr{cls}>" + "".join(_td(x) for x in r) + "</tr>")
    return "<table>\n" + h + "\n" + "\n".join(body) + "\n</table>"


def _kv(rows: list[tuple[str, Any]]) -> str:
    return "<table>\n" + "\n".join(f"<tr><th>{_esc(k)}</th>{_td(v)}</tr>" for k, v in rows) + "\n</table>"


def _img(rel: str | None, alt: str, cls: str = "chart") -> str:
    if not rel:
        return ""
    return f'<p><a href="{_url(rel)}"><img class="{cls}" src="{_url(rel)}" alt="{_esc(alt)}" loading="lazy"></a></p>'


def _list(items: list, limit: int = 50) -> str:
    if not items:
        return ""
    shown = "".join(f"<li>{_esc(x)}</li>" for x in items[:limit])
    more = f"<li>... and {len(items) - limit} more (see audit.json)</li>" if len(items) > limit else ""
    return f"<ul>{shown}{more}</ul>"


def _counts(table: dict) -> str:
    """``"k: v, k: v"`` of a counter dict."""
    return ", ".join(f"{k}: {v}" for k, v in table.items())


def _header(audit: dict) -> list[str]:
    return [
        f"<h1>Data audit: {_esc(audit['data']['root'])}</h1>",
        f'<p class="note">Written {_esc(datetime.now().strftime("%Y-%m-%d %H:%M"))}; '
        f"images {_esc(audit['data']['images'])}, masks {_esc(audit['data']['masks'])}. "
        "Machine-readable: audit.json.</p>",
    ]


def _problems(audit: dict) -> list[str]:
    s = ["<h2>Problems (most serious first)</h2>"]
    if audit.get("findings"):
        s.append(
            "<ul>"
            + "".join(
                f'<li class="{_esc(f["severity"])}"><span class="sev">{_esc(f["severity"])}</span>'
                f"{_esc(f['message'])}</li>"
                for f in audit["findings"]
            )
            + "</ul>"
        )
    else:
        s.append("<p>No problems found.</p>")
    return s


def _inventory(inv: dict, pics: dict) -> list[str]:
    s = ["<h2>Inventory</h2>"]
    s.append(
        _kv(
            [
                ("images", inv["n_image_ids"]),
                ("masks", inv["n_masks"]),
                ("image/mask pairs", inv["n_pairs"]),
                ("image formats", _counts(inv["formats"])),
                ("mask formats", _counts(inv["mask_formats"])),
                ("channels", _counts(inv["channels"])),
                ("pixel types", _counts(inv["dtypes"])),
                ("grey stored as RGB", len(inv["grey_stored_as_rgb"])),
                ("blank images", len(inv["constant_images"])),
                ("distinct sizes", len(inv["sizes"])),
                ("physical pixel size", describe_pixel_sizes(inv.get("pixel_size") or {})),
            ]
        )
    )
    s.append(_img(pics["plots"].get("sizes"), "image sizes"))
    s.append(_table(["width", "height", "images"], [[r["width"], r["height"], r["count"]] for r in inv["sizes"][:20]]))
    for key, title in (
        ("unreadable", "Unreadable files"),
        ("unpaired_images", "Images without a mask"),
        ("unpaired_masks", "Masks without an image"),
    ):
        if inv[key]:
            s.append(f"<h3>{_esc(title)} ({len(inv[key])})</h3>")
            s.append(_list([f"{r['file']}: {r['error']}" if isinstance(r, dict) else r for r in inv[key]]))
    if inv["multiple_masks"]:
        s.append(f"<h3>Images with several masks ({len(inv['multiple_masks'])})</h3>")
        s.append(_list([f"{r['id']}: {', '.join(r['masks'])}" for r in inv["multiple_masks"]]))
    if inv["size_mismatches"]:
        s.append(f"<h3>Size mismatches ({len(inv['size_mismatches'])})</h3>")
        s.append(
            _table(
                ["image", "mask", "image size", "mask size"],
                [
                    [r["image"], r["mask"], "x".join(map(str, r["image_size"])), "x".join(map(str, r["mask_size"]))]
                    for r in inv["size_mismatches"][:100]
                ],
            )
        )
    return s


def _class_table(masks: dict) -> str:
    head = [
        "class",
        "pixel share",
        "image share",
        "objects",
        "objects / image",
        "median area",
        "5% area",
        "95% area",
        "recommended min area",
        "specks (<= 4 px)",
        "weight inverse",
        "weight median",
    ]
    rows = []
    for c, name in enumerate(masks["classes"]):
        o = masks["objects"].get(name, {})
        p = o.get("percentiles", {})
        rows.append(
            [
                name,
                masks["class_pixel_fraction"][name],
                masks["class_image_fraction"][name],
                o.get("count"),
                o.get("per_image_mean"),
                p.get("50"),
                p.get("5"),
                p.get("95"),
                o.get("recommended_min_area"),
                o.get("specks"),
                masks["class_weights"]["inverse"][c],
                masks["class_weights"]["median"][c],
            ]
        )
    return _table(head, rows)


def _mask_problem_tables(masks: dict) -> list[str]:
    s = []
    if masks.get("mask_outliers"):
        s.append(f"<h3>Masks encoded unlike the others ({len(masks['mask_outliers'])})</h3>")
        s.append(
            _table(
                ["mask", "encoding", "main values", "values that are no class", "off-palette pixels"],
                [
                    [r["mask"], r["encoding"], str(r["levels"]), str(r["unknown_values"]), r["pixels"]]
                    for r in masks["mask_outliers"][:100]
                ],
            )
        )
    if masks.get("damaged_masks"):
        s.append(f"<h3>Damaged masks ({len(masks['damaged_masks'])})</h3>")
        s.append(
            _table(
                ["mask", "off-palette pixels", "fraction", "most common values [value, pixels]"],
                [[r["mask"], r["pixels"], r["fraction"], str(r["values"])] for r in masks["damaged_masks"][:100]],
            )
        )
    return s


def _masks(masks: dict, pics: dict) -> list[str]:
    s = ["<h2>Masks</h2>"]
    if masks.get("classes"):
        s.append(
            _kv(
                [
                    ("encoding", masks.get("encoding")),
                    ("encodings per file", _counts(masks.get("encodings", {}))),
                    ("palette", masks.get("palette_description")),
                    ("classes", masks["classes"]),
                    ("background class", masks.get("background")),
                    ("empty masks", masks["empty_masks"]),
                    ("empty-mask fraction", masks["empty_mask_fraction"]),
                    ("off-palette (damaged) pixels", masks.get("damaged_pixels")),
                ]
            )
        )
        s.append(_img(pics["plots"].get("classes"), "class shares"))
        s.append(_class_table(masks))
        s.append(
            '<p class="note">Objects: connected components (8-connectivity) per class. Recommended '
            "minimum area = half the 1st percentile of annotated object areas. Weights as "
            "<code>--class-weights inverse</code> (1 - f) and <code>median</code> (median frequency).</p>"
        )
        s.append(_img(pics["plots"].get("objects"), "object sizes"))
        s += _mask_problem_tables(masks)
    else:
        s.append("<p>No class statistics (no readable class masks).</p>")
    if pics.get("masks"):
        s.append(
            '<div class="thumbs">'
            + "".join(
                f'<figure><a href="{_url(m["picture"])}"><img class="pair" src="{_url(m["picture"])}" '
                f'alt="{_esc(m["id"])}" loading="lazy"></a><figcaption>{_esc(m["id"])}: {_esc(m["why"])}'
                "</figcaption></figure>"
                for m in pics["masks"]
            )
            + "</div>"
        )
    return s


def _intensity(it: dict, pics: dict) -> list[str]:
    s = ["<h2>Intensities</h2>"]
    if not it:
        return s
    rows = [["mean"] + it["mean"], ["std"] + it["std"]]
    rows += [[f"{k}% percentile"] + v for k, v in it.get("percentiles", {}).items()]
    s.append(_table(["statistic"] + it["channel_names"], rows))
    s.append(
        _kv(
            [("min", it.get("min")), ("max", it.get("max")), ("pixel types", _counts(it.get("dtypes", {})))]
            + (
                [("16-bit range used", it["uint16_range"]), ("effective bits", it["effective_bits"])]
                if it.get("uint16_range")
                else []
            )
        )
    )
    s.append(
        '<p class="note">mean/std: per-channel z-score normalisation over all pixels, as training '
        "computes it (grey images replicated when the data set has colour images).</p>"
    )
    s.append(_img(pics["plots"].get("intensity"), "intensity histogram"))
    return s


def _group_figures(dups: dict, pics: dict) -> list[str]:
    figs = []
    for g in dups["groups"]:
        rel = pics["groups"].get(str(g["id"]))
        if rel:
            cap = f"group {g['id']}: {', '.join(g['members'][:6])}" + (" (CONFLICT)" if g["conflict"] else "")
            figs.append(
                f'<figure><a href="{_url(rel)}"><img class="pair" src="{_url(rel)}" alt="group '
                f'{g["id"]}" loading="lazy"></a><figcaption>{_esc(cap)}</figcaption></figure>'
            )
    return figs


def _duplicates(audit: dict, dups: dict, pics: dict) -> list[str]:
    s = ["<h2>Near-duplicate images</h2>"]
    s.append(
        f"<p>{dups['n_groups']} groups, {dups['n_images']} images; {dups['n_conflicting_groups']} with "
        f"conflicting masks (Dice &lt; {_esc(audit['settings']['conflict_dice'])} or one empty), "
        f"{dups['n_leaking_groups']} straddling the dataset.json split. Distance = 1 - correlation of the "
        "aligned 128 px thumbnails (0 = identical); Dice after aligning the masks.</p>"
    )
    if not dups["groups"]:
        return s
    rows, classes = [], []
    for g in dups["groups"][:500]:
        members = g["members"][:8] + ([f"... {g['size'] - 8} more"] if g["size"] > 8 else [])
        rows.append(
            [
                g["id"],
                ", ".join(members),
                g["size"],
                g["exact"],
                g["max_distance"],
                g["min_dice"],
                g["conflict"],
                " + ".join(g["split_sides"]) or "-",
            ]
        )
        classes.append("conflict" if g["conflict"] else "")
    s.append(
        _table(
            ["group", "members", "size", "pixel-identical", "max distance", "min Dice", "conflict", "split"],
            rows,
            classes,
        )
    )
    figs = _group_figures(dups, pics)
    if figs:
        s.append(
            '<p class="note">Worst pair of each group: image A, image B, mask A, mask B, '
            "disagreement in A's frame (red: A only, blue: B only, white: both).</p>"
        )
        s.append('<div class="thumbs">' + "\n".join(figs) + "</div>")
    return s


def _timing(audit: dict) -> list[str]:
    fp = audit.get("fingerprint", {})
    return [
        "<h2>Timing</h2>",
        _kv([(k, v) for k, v in audit.get("timing", {}).items()] + [("fingerprint keys", ", ".join(fp))]),
    ]


def write_audit_html(out, audit: dict) -> Path:
    """Write ``out/audit.html`` from an audit dict (pictures from ``audit["pictures"]``)."""
    out = Path(out)
    pics = audit.get("pictures") or {"plots": {}, "groups": {}, "masks": []}
    inv, masks, it, dups = audit["inventory"], audit.get("masks", {}), audit.get("intensity") or {}, audit["duplicates"]
    s = (
        _header(audit)
        + _problems(audit)
        + _inventory(inv, pics)
        + _masks(masks, pics)
        + _intensity(it, pics)
        + _duplicates(audit, dups, pics)
        + _timing(audit)
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc('audit: ' + str(audit['data']['root']))}</title><style>{_CSS}</style></head>"
        "<body>\n" + "\n".join(x for x in s if x) + "\n</body></html>\n"
    )
    path = out / "audit.html"
    write_text(path, page)
    return path


def write_audit_report(run, out, pictures: bool = True) -> dict:
    """Write the report of a finished audit (:class:`biomedseg.audit.run.AuditRun`) into ``out``:
    the pictures in ``audit_files/`` (with ``pictures``), ``audit.json`` and ``audit.html``.
    Returns the plain audit dict (as written to ``audit.json``)."""
    from biomedseg.audit.run import save_audit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pics = draw_pictures(out, run.audit, run.scan, run.res, run.dups, run.pal) if pictures else None
    result = save_audit(out, run, pics)
    write_audit_html(out, result)
    return result


def audit_with_report(
    data=None,
    out=None,
    images=None,
    masks=None,
    check_flips: bool = False,
    progress: bool = True,
    pictures: bool = True,
) -> dict:
    """``biomedseg audit``: :func:`biomedseg.audit.run.run_audit` plus, when ``out`` is given,
    ``out/audit.html`` and its PNG pictures (``pictures``) next to ``out/audit.json``."""
    from biomedseg.audit.run import audit_dataset

    run = audit_dataset(data, images, masks, check_flips, progress)
    return run.result() if out is None else write_audit_report(run, out, pictures)
