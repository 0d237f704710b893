"""Pictures and the static HTML page of the data audit (``audit.html``).

The page needs no network: no external CSS/JS, pictures are PNG files in ``audit_files/`` next
to it linked by relative URLs, and every piece of text (file names included) is escaped.
matplotlib is used through its object-oriented API with the Agg canvas only.
"""

from __future__ import annotations

import html
import math
import numbers
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from biomedseg.io.writers import atomic_path, write_png, write_text

__all__ = ["draw_pictures", "write_audit_html", "PICTURE_DIR"]

PICTURE_DIR = "audit_files"
PANEL_HEIGHT = 200
MAX_MASK_PICTURES = 12

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
li.error { color: #a00000; } li.warning { color: #8a5a00; } li.info { color: #333; }
span.sev { font-weight: bold; text-transform: uppercase; font-size: 0.8em; margin-right: 0.5em; }
.note { color: #666; font-size: 0.85em; }
img.chart { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
img.pair { max-width: 100%; border: 1px solid #aaa; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.8em; }
.thumbs figure { margin: 0; } .thumbs figcaption { font-size: 0.8em; word-break: break-all; max-width: 600px; }
tr.conflict td { background: #fff0f0; }
"""


# ----------------------------------------------------------------------------- pictures
def _save_fig(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _fit(rgb: np.ndarray, height: int = PANEL_HEIGHT) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    if h == height:
        return rgb
    new_w = max(1, int(round(w * height / h)))
    return np.asarray(Image.fromarray(rgb).resize((new_w, height), Image.BILINEAR))


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(pil)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((3, 3), text, font=font)
    draw.rectangle((0, 0, right + 3, bottom + 3), fill=(0, 0, 0))
    draw.text((3, 3), text, fill=(255, 255, 255), font=font)
    return np.asarray(pil)


def _row(panels: list[tuple[np.ndarray, str]]) -> np.ndarray:
    fitted = [_label(_fit(p), t) for p, t in panels]
    gap = np.full((PANEL_HEIGHT, 4, 3), 255, np.uint8)
    parts = []
    for i, p in enumerate(fitted):
        if i:
            parts.append(gap)
        parts.append(p)
    return np.concatenate(parts, axis=1)


def _disagreement(ma: np.ndarray, mb: np.ndarray, dy: int, dx: int, bg: int | None) -> np.ndarray:
    """RGB map in A's frame: white both foreground, red only A, blue only B, grey outside B."""
    h, w = ma.shape
    out = np.full((h, w, 3), 60, np.uint8)
    b_in = np.zeros((h, w), bool)
    fb = np.zeros((h, w), bool)
    y0, y1 = max(dy, 0), h + min(dy, 0)
    x0, x1 = max(dx, 0), w + min(dx, 0)
    bgc = 0 if bg is None else bg
    if y1 > y0 and x1 > x0:
        b_in[y0:y1, x0:x1] = True
        fb[y0:y1, x0:x1] = mb[y0 - dy:y1 - dy, x0 - dx:x1 - dx] != bgc
    fa = ma != bgc
    out[b_in] = (0, 0, 0)
    out[fa & fb] = (255, 255, 255)
    out[fa & ~fb] = (230, 30, 30)
    out[~fa & fb] = (40, 120, 255)
    return out


def _pair_picture(path: Path, judge, pair, row: dict, names: list[str]) -> bool:
    from biomedseg.data.duplicates import flip_array
    from biomedseg.io.images import read_image
    from biomedseg.reports.overlays import class_overlay, to_display_rgb

    items = judge.items
    try:
        ia = to_display_rgb(read_image(items[pair.i].image))
        ib = to_display_rgb(np.ascontiguousarray(flip_array(read_image(items[pair.j].image), pair.flip)))
    except Exception:  # noqa: BLE001 - a picture is optional
        return False
    ma, mb, (dy, dx) = judge.aligned(pair)
    dice = row.get("dice")
    flipped = f" (flip {pair.flip})" if pair.flip else ""
    panels = [(ia, f"A {items[pair.i].id}"), (ib, f"B {items[pair.j].id}{flipped}")]
    if ma is not None and mb is not None:
        mb_raw = judge.mask(pair.j)
        mb_raw = np.ascontiguousarray(flip_array(mb_raw, pair.flip))
        if mb_raw.shape == ib.shape[:2]:
            panels.append((class_overlay(ib, mb_raw), "mask B"))
        panels.insert(2, (class_overlay(ia, ma), "mask A"))
        d = "n/a" if dice is None else f"{dice:.3f}"
        panels.append((_disagreement(ma, mb, dy, dx, judge.bg), f"Dice {d} red=A only blue=B only"))
    write_png(path, _row(panels))
    return True


def _mask_picture(path: Path, image_path: Path | None, mask_paths: list[Path], palette, title: str) -> bool:
    from biomedseg.io.images import read_image, read_raw
    from biomedseg.io.masks import read_mask
    from biomedseg.reports.overlays import colorize_mask, to_display_rgb

    panels = []
    try:
        if image_path is not None:
            panels.append((to_display_rgb(read_image(image_path)), title))
        for mp in mask_paths[:4]:
            raw = read_raw(mp)
            if raw.ndim == 3:
                raw = raw[..., :3]
            show = to_display_rgb(raw.astype(np.uint8) if raw.dtype == np.uint8 else raw)
            if raw.dtype == np.uint8 and raw.ndim == 2 and raw.max() < 32:
                show = to_display_rgb(raw * np.uint8(255 // max(int(raw.max()), 1)))
            panels.append((show, f"stored {mp.name}"))
            if palette is not None and len(mask_paths) == 1:
                try:
                    panels.append((colorize_mask(read_mask(mp, palette)[0]), "as classes"))
                except Exception:  # noqa: BLE001 - e.g. a colour mask among grey ones
                    pass
    except Exception:  # noqa: BLE001 - a picture is optional
        return False
    if not panels:
        return False
    write_png(path, _row(panels))
    return True


def _plot_sizes(path: Path, sizes: list[dict]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    w = np.array([s["width"] for s in sizes], float)
    h = np.array([s["height"] for s in sizes], float)
    c = np.array([s["count"] for s in sizes], float)
    ax.scatter(w, h, s=20 + 200 * c / c.max(), alpha=0.6, color="#3070c0")
    for s in sizes[:8]:
        ax.annotate(str(s["count"]), (s["width"], s["height"]), fontsize=8)
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title("image sizes (marker = number of images)")
    _save_fig(fig, path)


def _plot_classes(path: Path, masks: dict) -> None:
    from matplotlib.figure import Figure

    names = list(masks["class_pixel_fraction"])
    fig = Figure(figsize=(min(16, 3 + 1.6 * len(names)), 3.6), layout="constrained")
    for k, (key, title) in enumerate((("class_pixel_fraction", "share of pixels"),
                                      ("class_image_fraction", "share of images containing the class"))):
        ax = fig.add_subplot(1, 2, k + 1)
        vals = [masks[key][n] for n in names]
        bars = ax.bar(range(len(names)), vals, color="#4a90d9")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_title(title, fontsize=10)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=7)
    _save_fig(fig, path)


def _plot_objects(path: Path, objects: dict) -> bool:
    from matplotlib.figure import Figure

    shown = [(c, o) for c, o in objects.items() if o.get("count")]
    if not shown:
        return False
    fig = Figure(figsize=(6, 1.2 + 2.2 * len(shown)), layout="constrained")
    for k, (c, o) in enumerate(shown):
        ax = fig.add_subplot(len(shown), 1, k + 1)
        edges = o["histogram"]["edges"]
        counts = o["histogram"]["counts"]
        ax.bar(range(len(counts)), counts, color="#60a060")
        ax.set_xticks(range(len(counts)), [str(e) for e in edges], rotation=60, fontsize=7)
        rec = o.get("recommended_min_area")
        ax.set_title(f"{c}: {o['count']} objects, median {o['percentiles'].get('50', 0):.0f} px"
                     + (f", recommended min area {rec} px" if rec else ""), fontsize=9)
        ax.set_ylabel("objects", fontsize=8)
    fig.supxlabel("object area (px, bins start at)", fontsize=8)
    _save_fig(fig, path)
    return True


def _plot_intensity(path: Path, acc, colour: bool, intensity: dict) -> bool:
    from matplotlib.figure import Figure

    hist = acc.histogram(colour)
    if hist is None:
        return False
    edges, counts = hist
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#d03030", "#30a030", "#3050d0"] if colour else ["#404040"]
    centres = 0.5 * (edges[:-1] + edges[1:])
    for i, row in enumerate(counts):
        ax.plot(centres, row / max(row.sum(), 1), color=colors[i], label=intensity["channel_names"][i])
    for key, ls in (("0.5", ":"), ("99.5", ":"), ("50", "--")):
        for v in intensity.get("percentiles", {}).get(key, []):
            ax.axvline(v, color="#888", ls=ls, lw=0.8)
    ax.set_xlabel("intensity")
    ax.set_ylabel("share of pixels")
    ax.set_title("intensity histogram (dotted: 0.5/99.5 percentiles, dashed: median)", fontsize=9)
    ax.legend(fontsize=8)
    _save_fig(fig, path)
    return True


def draw_pictures(out: Path, audit: dict, scan, res: dict, dups: dict, pal: dict) -> dict:
    """Draw the plots and problem pictures into ``out/audit_files``; return relative paths."""
    folder = Path(out) / PICTURE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        if old.name.startswith(("pair_", "mask_", "plot_")):
            old.unlink()
    pics: dict[str, Any] = {"plots": {}, "groups": {}, "masks": []}
    rel = f"{PICTURE_DIR}/"
    inv, masks, it = audit["inventory"], audit["masks"], audit.get("intensity") or {}
    try:
        if inv["sizes"]:
            _plot_sizes(folder / "plot_sizes.png", inv["sizes"])
            pics["plots"]["sizes"] = rel + "plot_sizes.png"
        if masks.get("class_pixel_fraction"):
            _plot_classes(folder / "plot_classes.png", masks)
            pics["plots"]["classes"] = rel + "plot_classes.png"
            if _plot_objects(folder / "plot_objects.png", masks.get("objects", {})):
                pics["plots"]["objects"] = rel + "plot_objects.png"
        if it and _plot_intensity(folder / "plot_intensity.png", res["acc"], it.get("channels") == 3, it):
            pics["plots"]["intensity"] = rel + "plot_intensity.png"
    except ImportError:  # pragma: no cover - matplotlib missing
        pass
    judge = dups["judge"]
    names = masks.get("classes") or []
    from biomedseg.data.audit import MAX_PAIR_PICTURES

    for g in dups["groups"][:MAX_PAIR_PICTURES]:
        pair = g["_worst"]
        row = next((r for r in g["pairs"] if r["a"] == judge.items[pair.i].id and r["b"] == judge.items[pair.j].id), {})
        name = f"pair_{g['id']:04d}.png"
        if _pair_picture(folder / name, judge, pair, row, names):
            pics["groups"][str(g["id"])] = rel + name
    by_id = {item.id: item for item in scan.items}
    todo: list[tuple[str, str, list]] = []
    for r in masks.get("mask_outliers", [])[:MAX_MASK_PICTURES]:
        todo.append(("encoded unlike the others", r["id"], [by_id[r["id"]].mask]))
    for r in masks.get("damaged_masks", [])[:MAX_MASK_PICTURES]:
        todo.append(("damaged", r["id"], [by_id[r["id"]].mask]))
    for r in inv.get("multiple_masks", [])[:MAX_MASK_PICTURES]:
        item = by_id[r["id"]]
        todo.append(("several masks", r["id"], [item.mask] + item.extra_masks))
    palette = pal.get("palette")
    for k, (why, sid, mpaths) in enumerate(todo):
        name = f"mask_{k:03d}.png"
        if _mask_picture(folder / name, by_id[sid].image, mpaths, palette, f"{sid} ({why})"):
            pics["masks"].append({"id": sid, "why": why, "picture": rel + name})
    return pics


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


def write_audit_html(out, audit: dict) -> Path:
    """Write ``out/audit.html`` from an audit dict (pictures from ``audit["pictures"]``)."""
    out = Path(out)
    pics = audit.get("pictures") or {"plots": {}, "groups": {}, "masks": []}
    inv, masks, it, dups = audit["inventory"], audit.get("masks", {}), audit.get("intensity") or {}, audit["duplicates"]
    s: list[str] = [f"<h1>Data audit: {_esc(audit['data']['root'])}</h1>",
                    f'<p class="note">Written {_esc(datetime.now().strftime("%Y-%m-%d %H:%M"))}; '
                    f"images {_esc(audit['data']['images'])}, masks {_esc(audit['data']['masks'])}. "
                    "Machine-readable: audit.json.</p>"]
    s.append("<h2>Problems (most serious first)</h2>")
    if audit.get("findings"):
        s.append("<ul>" + "".join(
            f'<li class="{_esc(f["severity"])}"><span class="sev">{_esc(f["severity"])}</span>{_esc(f["message"])}</li>'
            for f in audit["findings"]) + "</ul>")
    else:
        s.append("<p>No problems found.</p>")
    s.append("<h2>Inventory</h2>")
    s.append(_kv([("images", inv["n_image_ids"]), ("masks", inv["n_masks"]), ("image/mask pairs", inv["n_pairs"]),
                  ("image formats", ", ".join(f"{k}: {v}" for k, v in inv["formats"].items())),
                  ("mask formats", ", ".join(f"{k}: {v}" for k, v in inv["mask_formats"].items())),
                  ("channels", ", ".join(f"{k}: {v}" for k, v in inv["channels"].items())),
                  ("pixel types", ", ".join(f"{k}: {v}" for k, v in inv["dtypes"].items())),
                  ("grey stored as RGB", len(inv["grey_stored_as_rgb"])),
                  ("blank images", len(inv["constant_images"])),
                  ("distinct sizes", len(inv["sizes"]))]))
    s.append(_img(pics["plots"].get("sizes"), "image sizes"))
    s.append(_table(["width", "height", "images"], [[r["width"], r["height"], r["count"]] for r in inv["sizes"][:20]]))
    for key, title in (("unreadable", "Unreadable files"), ("unpaired_images", "Images without a mask"),
                       ("unpaired_masks", "Masks without an image")):
        if inv[key]:
            s.append(f"<h3>{_esc(title)} ({len(inv[key])})</h3>")
            s.append(_list([f"{r['file']}: {r['error']}" if isinstance(r, dict) else r for r in inv[key]]))
    if inv["multiple_masks"]:
        s.append(f"<h3>Images with several masks ({len(inv['multiple_masks'])})</h3>")
        s.append(_list([f"{r['id']}: {', '.join(r['masks'])}" for r in inv["multiple_masks"]]))
    if inv["size_mismatches"]:
        s.append(f"<h3>Size mismatches ({len(inv['size_mismatches'])})</h3>")
        s.append(_table(["image", "mask", "image size", "mask size"],
                        [[r["image"], r["mask"], "x".join(map(str, r["image_size"])),
                          "x".join(map(str, r["mask_size"]))]
                         for r in inv["size_mismatches"][:100]]))
    s.append("<h2>Masks</h2>")
    if masks.get("classes"):
        s.append(_kv([("encoding", masks.get("encoding")), ("encodings per file", ", ".join(
            f"{k}: {v}" for k, v in masks.get("encodings", {}).items())),
            ("palette", masks.get("palette_description")), ("classes", masks["classes"]),
            ("background class", masks.get("background")), ("empty masks", masks["empty_masks"]),
            ("empty-mask fraction", masks["empty_mask_fraction"]),
            ("off-palette (damaged) pixels", masks.get("damaged_pixels"))]))
        s.append(_img(pics["plots"].get("classes"), "class shares"))
        head = ["class", "pixel share", "image share", "objects", "objects / image", "median area",
                "5% area", "95% area", "recommended min area", "specks (<= 4 px)", "weight inverse", "weight median"]
        rows = []
        for c, name in enumerate(masks["classes"]):
            o = masks["objects"].get(name, {})
            p = o.get("percentiles", {})
            rows.append([name, masks["class_pixel_fraction"][name], masks["class_image_fraction"][name],
                         o.get("count"), o.get("per_image_mean"), p.get("50"), p.get("5"), p.get("95"),
                         o.get("recommended_min_area"), o.get("specks"),
                         masks["class_weights"]["inverse"][c], masks["class_weights"]["median"][c]])
        s.append(_table(head, rows))
        s.append('<p class="note">Objects: connected components (8-connectivity) per class. Recommended '
                 "minimum area = half the 1st percentile of annotated object areas. Weights as "
                 "<code>--class-weights inverse</code> (1 - f) and <code>median</code> (median frequency).</p>")
        s.append(_img(pics["plots"].get("objects"), "object sizes"))
        if masks.get("mask_outliers"):
            s.append(f"<h3>Masks encoded unlike the others ({len(masks['mask_outliers'])})</h3>")
            s.append(_table(["mask", "encoding", "main values", "values that are no class", "off-palette pixels"],
                            [[r["mask"], r["encoding"], str(r["levels"]), str(r["unknown_values"]), r["pixels"]]
                             for r in masks["mask_outliers"][:100]]))
        if masks.get("damaged_masks"):
            s.append(f"<h3>Damaged masks ({len(masks['damaged_masks'])})</h3>")
            s.append(_table(["mask", "off-palette pixels", "fraction", "most common values [value, pixels]"],
                            [[r["mask"], r["pixels"], r["fraction"], str(r["values"])]
                             for r in masks["damaged_masks"][:100]]))
    else:
        s.append("<p>No class statistics (no readable class masks).</p>")
    if pics.get("masks"):
        s.append('<div class="thumbs">' + "".join(
            f'<figure><a href="{_url(m["picture"])}"><img class="pair" src="{_url(m["picture"])}" '
            f'alt="{_esc(m["id"])}" loading="lazy"></a><figcaption>{_esc(m["id"])}: {_esc(m["why"])}'
            "</figcaption></figure>" for m in pics["masks"]) + "</div>")
    s.append("<h2>Intensities</h2>")
    if it:
        rows = [["mean"] + it["mean"], ["std"] + it["std"]]
        rows += [[f"{k}% percentile"] + v for k, v in it.get("percentiles", {}).items()]
        s.append(_table(["statistic"] + it["channel_names"], rows))
        s.append(_kv([("min", it.get("min")), ("max", it.get("max")),
                      ("pixel types", ", ".join(f"{k}: {v}" for k, v in it.get("dtypes", {}).items()))]
                     + ([("16-bit range used", it["uint16_range"]), ("effective bits", it["effective_bits"])]
                        if it.get("uint16_range") else [])))
        s.append('<p class="note">mean/std: per-channel z-score normalisation over all pixels, as training '
                 "computes it (grey images replicated when the data set has colour images).</p>")
        s.append(_img(pics["plots"].get("intensity"), "intensity histogram"))
    s.append("<h2>Near-duplicate images</h2>")
    s.append(f"<p>{dups['n_groups']} groups, {dups['n_images']} images; {dups['n_conflicting_groups']} with "
             f"conflicting masks (Dice &lt; {_esc(audit['settings']['conflict_dice'])} or one empty), "
             f"{dups['n_leaking_groups']} straddling the dataset.json split. Distance = 1 - correlation of the "
             "aligned 128 px thumbnails (0 = identical); Dice after aligning the masks.</p>")
    if dups["groups"]:
        rows, classes = [], []
        for g in dups["groups"][:500]:
            members = g["members"][:8] + ([f"... {g['size'] - 8} more"] if g["size"] > 8 else [])
            rows.append([g["id"], ", ".join(members), g["size"], g["exact"], g["max_distance"], g["min_dice"],
                         g["conflict"], " + ".join(g["split_sides"]) or "-"])
            classes.append("conflict" if g["conflict"] else "")
        s.append(_table(["group", "members", "size", "pixel-identical", "max distance", "min Dice",
                         "conflict", "split"], rows, classes))
        figs = []
        for g in dups["groups"]:
            rel = pics["groups"].get(str(g["id"]))
            if rel:
                cap = f"group {g['id']}: {', '.join(g['members'][:6])}" + (" (CONFLICT)" if g["conflict"] else "")
                figs.append(f'<figure><a href="{_url(rel)}"><img class="pair" src="{_url(rel)}" alt="group '
                            f'{g["id"]}" loading="lazy"></a><figcaption>{_esc(cap)}</figcaption></figure>')
        if figs:
            s.append('<p class="note">Worst pair of each group: image A, image B, mask A, mask B, '
                     "disagreement in A's frame (red: A only, blue: B only, white: both).</p>")
            s.append('<div class="thumbs">' + "\n".join(figs) + "</div>")
    fp = audit.get("fingerprint", {})
    s.append("<h2>Timing</h2>")
    s.append(_kv([(k, v) for k, v in audit.get("timing", {}).items()] + [("fingerprint keys", ", ".join(fp))]))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc('audit: ' + str(audit['data']['root']))}</title><style>{_CSS}</style></head>"
            "<body>\n" + "\n".join(x for x in s if x) + "\n</body></html>\n")
    path = out / "audit.html"
    write_text(path, page)
    return path
