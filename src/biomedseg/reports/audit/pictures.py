"""Problem pictures of the data audit page: duplicate pairs and masks worth a look.

Pictures are rows of labelled panels ``PANEL_HEIGHT`` pixels high, written as PNG files into
``audit_files/`` (:data:`PICTURE_DIR`) next to ``audit.html``; :func:`draw_pictures` also
draws the charts of :mod:`biomedseg.reports.audit.plots`. A picture that cannot be drawn is
left out (drawing is optional and never fails the audit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomedseg.io.writers import write_png
from biomedseg.reports.audit.plots import plot_classes, plot_intensity, plot_objects, plot_sizes

PICTURE_DIR = "audit_files"
PANEL_HEIGHT = 200
MAX_MASK_PICTURES = 12


def _fit(rgb: np.ndarray, height: int = PANEL_HEIGHT) -> np.ndarray:
    """``(H, W, 3)`` uint8 resized (bilinear) to ``height`` rows, aspect kept."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if h == height:
        return rgb
    new_w = max(1, int(round(w * height / h)))
    return np.asarray(Image.fromarray(rgb).resize((new_w, height), Image.BILINEAR))


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 with ``text`` in white on black in the top-left corner."""
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
    """``(PANEL_HEIGHT, W, 3)`` uint8: the labelled panels side by side, 4 px white gaps."""
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
        fb[y0:y1, x0:x1] = mb[y0 - dy : y1 - dy, x0 - dx : x1 - dx] != bgc
    fa = ma != bgc
    out[b_in] = (0, 0, 0)
    out[fa & fb] = (255, 255, 255)
    out[fa & ~fb] = (230, 30, 30)
    out[~fa & fb] = (40, 120, 255)
    return out


def _pair_picture(path: Path, judge, pair, row: dict, names: list[str]) -> bool:
    """Image A, image B, mask A, mask B and their disagreement; ``False`` if unreadable."""
    from biomedseg.audit.duplicates import flip_array
    from biomedseg.core.render import class_overlay, to_display_rgb
    from biomedseg.io.images import read_image

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
    """The image, its masks as stored (and as classes); ``False`` if nothing could be drawn."""
    from biomedseg.core.render import colorize_mask, to_display_rgb
    from biomedseg.io.images import read_image, read_raw
    from biomedseg.io.masks import read_mask

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


def _draw_plots(folder: Path, audit: dict, res: dict) -> dict[str, str]:
    """The charts: ``{"sizes" | "classes" | "objects" | "intensity": relative path}``."""
    plots: dict[str, str] = {}
    rel = f"{PICTURE_DIR}/"
    inv, masks, it = audit["inventory"], audit["masks"], audit.get("intensity") or {}
    try:
        if inv["sizes"]:
            plot_sizes(folder / "plot_sizes.png", inv["sizes"])
            plots["sizes"] = rel + "plot_sizes.png"
        if masks.get("class_pixel_fraction"):
            plot_classes(folder / "plot_classes.png", masks)
            plots["classes"] = rel + "plot_classes.png"
            if plot_objects(folder / "plot_objects.png", masks.get("objects", {})):
                plots["objects"] = rel + "plot_objects.png"
        if it and plot_intensity(folder / "plot_intensity.png", res["acc"], it.get("channels") == 3, it):
            plots["intensity"] = rel + "plot_intensity.png"
    except ImportError:  # pragma: no cover - matplotlib missing
        pass
    return plots


def _draw_pair_pictures(folder: Path, dups: dict, names: list[str]) -> dict[str, str]:
    """The worst pair of each near-duplicate group: ``{group id: relative path}``."""
    from biomedseg.audit.duplicate_groups import MAX_PAIR_PICTURES

    pictures: dict[str, str] = {}
    judge = dups["judge"]
    for g in dups["groups"][:MAX_PAIR_PICTURES]:
        pair = g["_worst"]
        row = next((r for r in g["pairs"] if r["a"] == judge.items[pair.i].id and r["b"] == judge.items[pair.j].id), {})
        name = f"pair_{g['id']:04d}.png"
        if _pair_picture(folder / name, judge, pair, row, names):
            pictures[str(g["id"])] = f"{PICTURE_DIR}/" + name
    return pictures


def _draw_mask_pictures(folder: Path, audit: dict, scan, palette) -> list[dict]:
    """Masks encoded unlike the others, damaged masks and images with several masks:
    ``[{"id", "why", "picture"}]``."""
    inv, masks = audit["inventory"], audit["masks"]
    by_id = {item.id: item for item in scan.items}
    todo: list[tuple[str, str, list]] = []
    for r in masks.get("mask_outliers", [])[:MAX_MASK_PICTURES]:
        todo.append(("encoded unlike the others", r["id"], [by_id[r["id"]].mask]))
    for r in masks.get("damaged_masks", [])[:MAX_MASK_PICTURES]:
        todo.append(("damaged", r["id"], [by_id[r["id"]].mask]))
    for r in inv.get("multiple_masks", [])[:MAX_MASK_PICTURES]:
        item = by_id[r["id"]]
        todo.append(("several masks", r["id"], [item.mask] + item.extra_masks))
    pictures = []
    for k, (why, sid, mpaths) in enumerate(todo):
        name = f"mask_{k:03d}.png"
        if _mask_picture(folder / name, by_id[sid].image, mpaths, palette, f"{sid} ({why})"):
            pictures.append({"id": sid, "why": why, "picture": f"{PICTURE_DIR}/" + name})
    return pictures


def draw_pictures(out: Path, audit: dict, scan, res: dict, dups: dict, pal: dict) -> dict:
    """Draw the plots and problem pictures into ``out/audit_files``; return relative paths.

    Returns ``{"plots": {name: path}, "groups": {group id: path}, "masks": [{"id", "why",
    "picture"}]}`` (paths relative to ``out``). Old pictures of a previous run are removed.
    """
    folder = Path(out) / PICTURE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        if old.name.startswith(("pair_", "mask_", "plot_")):
            old.unlink()
    pics: dict[str, Any] = {"plots": {}, "groups": {}, "masks": []}
    pics["plots"] = _draw_plots(folder, audit, res)
    pics["groups"] = _draw_pair_pictures(folder, dups, audit["masks"].get("classes") or [])
    pics["masks"] = _draw_mask_pictures(folder, audit, scan, pal.get("palette"))
    return pics
