"""Drawing (pure numpy): class colours, coloured masks, prediction errors and overlays on the image.

Below every package that writes pictures (prediction overlays, evaluation and audit reports).

All functions take numpy arrays and return ``(H, W, 3)`` ``uint8`` RGB arrays ready for
``write_png``. Images are ``(H, W)`` or ``(H, W, C)`` with ``C`` in {1, 3} (``uint8``, ``uint16``
or float); masks are ``(H, W)`` integer index masks (class ``0..K-1``).
"""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np

from biomedseg.core.labels import IGNORE_INDEX

__all__ = [
    "ERROR_COLORS",
    "class_colors",
    "to_display_rgb",
    "error_overlay",
    "class_overlay",
    "colorize_mask",
    "overlay_panel",
]

#: Colours of the error overlay (RGB), also used for the legend of the HTML report.
#: Green / red / blue stay distinguishable for the common red-green colour blindness by
#: brightness (FN is a light blue, FP a saturated red).
ERROR_COLORS: dict[str, tuple[int, int, int]] = {"TP": (0, 200, 0), "FP": (230, 0, 0), "FN": (30, 100, 255)}

#: Human-readable meaning of each overlay colour.
ERROR_LABELS: dict[str, str] = {
    "TP": "true positive (predicted and true)",
    "FP": "false positive (predicted, not true)",
    "FN": "false negative (true, missed)",
}

# First class colours: distinct, saturated, readable on grey tissue images.
_BASE_PALETTE = [
    (255, 215, 0),  # yellow
    (0, 190, 255),  # sky blue
    (255, 60, 160),  # magenta
    (60, 220, 90),  # green
    (255, 130, 0),  # orange
    (150, 90, 255),  # violet
    (0, 230, 200),  # turquoise
    (230, 30, 30),  # red
    (170, 255, 60),  # lime
    (120, 160, 255),  # periwinkle
]


def class_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` RGB colours for class indices ``0..n-1``; index 0 (background) is black.

    The first 10 foreground colours are fixed; more are spread over the hue circle by the
    golden ratio so that neighbouring indices differ.
    """
    colors: list[tuple[int, int, int]] = [(0, 0, 0)]
    for i in range(1, n):
        if i - 1 < len(_BASE_PALETTE):
            colors.append(_BASE_PALETTE[i - 1])
        else:
            h = (i * 0.618033988749895) % 1.0
            v = 0.95 if i % 2 else 0.75
            r, g, b = colorsys.hsv_to_rgb(h, 0.85, v)
            colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors[:n]


def _as_hwc(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {img.shape}")
    return img[:, :, :3]


def to_display_rgb(image) -> np.ndarray:
    """Convert an image to ``(H, W, 3)`` ``uint8`` RGB for display.

    ``uint8`` images are kept as they are (grey replicated to 3 channels). ``uint16``, other
    integer and float images are contrast-stretched per image: the 1st..99th percentile of the
    finite values (all channels together, so colour balance is kept) maps to 0..255; if that
    range is empty the min..max range is used, and a constant image becomes black. NaN/inf -> 0.
    """
    img = _as_hwc(image)
    if img.dtype == np.uint8:
        out = img
    elif img.dtype == bool:
        out = img.astype(np.uint8) * 255
    else:
        data = img.astype(np.float32, copy=False)
        finite = np.isfinite(data)
        values = data[finite]
        if values.size > 2_000_000:  # percentiles of a regular subsample are plenty
            values = values[:: values.size // 1_000_000]
        if values.size == 0:
            lo = hi = 0.0
        else:
            lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
            if hi <= lo:
                lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            scaled = (data - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(data)
        scaled = np.where(finite, scaled, 0.0)
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def _grey_rgb(image) -> np.ndarray:
    """``(H, W, 3)`` float32 grey (luminance) version of the display image."""
    rgb = to_display_rgb(image).astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _check_mask(mask, shape: tuple[int, int], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} shape {mask.shape} differs from image size {shape}")
    return mask


def _blend(base: np.ndarray, where: np.ndarray, color, alpha: float) -> None:
    """In place: ``base[where] = (1 - alpha) * base + alpha * color`` (float arrays)."""
    base[where] = base[where] * (1.0 - alpha) + np.asarray(color, dtype=np.float32) * alpha


def error_overlay(image, pred, target, class_index: int, alpha: float = 0.5, valid=None) -> np.ndarray:
    """Prediction errors of one class blended on the grey image.

    Args:
        image: ``(H, W)`` / ``(H, W, C)`` image (any dtype accepted by :func:`to_display_rgb`).
        pred, target: ``(H, W)`` index masks.
        class_index: the class drawn (one-vs-rest).
        alpha: colour weight in ``0..1``.
        valid: optional ``(H, W)`` bool mask; pixels outside stay grey.

    Returns:
        ``(H, W, 3)`` ``uint8``: TP pixels tinted ``ERROR_COLORS["TP"]``, FP ``["FP"]``,
        FN ``["FN"]``; true negatives and unlabelled target pixels (``IGNORE_INDEX``) keep the grey
        image value.
    """
    grey = _grey_rgb(image)
    shape = grey.shape[:2]
    target = _check_mask(target, shape, "target")
    p = _check_mask(pred, shape, "prediction") == class_index
    t = target == class_index
    labelled = target != IGNORE_INDEX
    v = labelled if valid is None else labelled & _check_mask(valid, shape, "valid mask").astype(bool)
    p &= v
    t &= v
    _blend(grey, p & t, ERROR_COLORS["TP"], alpha)
    _blend(grey, p & ~t, ERROR_COLORS["FP"], alpha)
    _blend(grey, ~p & t, ERROR_COLORS["FN"], alpha)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _palette(colors, n: int) -> list:
    if colors is None:
        return list(class_colors(n))
    colors = list(colors)
    if len(colors) < n:
        raise ValueError(f"{len(colors)} colours for class indices up to {n - 1}")
    return colors


def colorize_mask(mask, colors: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """Index mask ``(H, W)`` -> ``(H, W, 3)`` ``uint8`` RGB (default :func:`class_colors`,
    background black). ``colors[i]`` is the RGB of class ``i``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) index mask, got shape {mask.shape}")
    n = int(mask.max()) + 1 if mask.size else 1
    lut = np.array([c if c is not None else (0, 0, 0) for c in _palette(colors, n)], dtype=np.uint8).reshape(-1, 3)
    return lut[mask.astype(np.intp)]


def class_overlay(
    image,
    mask,
    colors: Sequence[tuple[int, int, int] | None] | None = None,
    alpha: float = 0.45,
    background: int | None = 0,
) -> np.ndarray:
    """Class colours blended on the image.

    Args:
        image: ``(H, W)`` / ``(H, W, C)`` image; mask: ``(H, W)`` index mask.
        colors: RGB per class index (default :func:`class_colors`); a ``None`` entry leaves that
            class transparent.
        background: class index left transparent (None: colour every class).

    Returns:
        ``(H, W, 3)`` ``uint8``; background pixels keep the (colour) display image.
    """
    base = to_display_rgb(image)
    mask = _check_mask(mask, base.shape[:2], "mask")
    n = int(mask.max()) + 1 if mask.size else 1
    palette = _palette(colors, n)
    # one lookup table per class: (class, display value, channel) -> blended value, the same float32
    # arithmetic as :func:`_blend` (16 times faster than blending a float copy of a large image)
    table = np.repeat(np.arange(256, dtype=np.float32)[None, :, None], max(n, 1), axis=0).repeat(3, axis=2)
    for c in range(n):
        if c != background and palette[c] is not None:
            table[c] = table[c] * (1.0 - alpha) + np.asarray(palette[c], dtype=np.float32) * alpha
    table = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    rows = mask.astype(np.intp) * 256
    out = np.empty_like(base)
    for k in range(3):
        out[:, :, k] = table[:, :, k].ravel()[rows + base[:, :, k]]
    return out


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    """Draw ``text`` in the top-left corner on a dark box (skipped for tiny images)."""
    h, w = panel.shape[:2]
    if h < 32 or w < 48:
        return panel
    from PIL import Image, ImageDraw, ImageFont

    size = max(10, min(h, w) // 30)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        font = ImageFont.load_default()
    pil = Image.fromarray(panel)
    draw = ImageDraw.Draw(pil)
    pad = max(2, size // 4)
    left, top, right, bottom = draw.textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 255), font=font)
    return np.array(pil)


def overlay_panel(
    image,
    pred,
    target,
    class_names: Sequence[str],
    background: int | None = 0,
    alpha: float = 0.5,
    valid=None,
    label: bool = True,
) -> np.ndarray:
    """One :func:`error_overlay` per foreground class, side by side.

    Args:
        image: ``(H, W)`` / ``(H, W, C)`` image; pred, target: ``(H, W)`` index masks.
        class_names: K names (K = number of classes); each panel is labelled with its class
            name and that image's Dice of the class (labels only on images >= 48x32 pixels).
        background: class without a panel (None: a panel for every class). A binary task thus
            gives one panel.

    Returns:
        ``(H, W * n_panels, 3)`` ``uint8``.
    """
    names = list(class_names)
    k = len(names)
    classes = [c for c in range(k) if background is None or c != background] or list(range(k))
    p_all = np.asarray(pred)
    t_all = np.asarray(target)
    v = None if valid is None else np.asarray(valid, dtype=bool)
    display = to_display_rgb(image)  # contrast stretch once, not once per class
    panels = []
    for c in classes:
        panel = error_overlay(display, p_all, t_all, c, alpha=alpha, valid=v)
        if label:
            p = p_all == c
            t = t_all == c
            if v is not None:
                p, t = p & v, t & v
            tp = int(np.count_nonzero(p & t))
            den = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
            dice = 2.0 * tp / den if den else 1.0
            panel = _label(panel, f"{names[c]}  Dice {dice:.3f}")
        panels.append(panel)
    return np.concatenate(panels, axis=1)
