"""A small synthetic, microscopy-like segmentation dataset (used by ``biomedseg demo``).

Every image shows a textured, unevenly illuminated, noisy background with

* **cells** (class 1): round/elliptical blobs with slightly wobbly outlines, a textured interior
  of moderate contrast and a darker rim; some of them touch each other;
* **filaments** (class 2): thin (2-4 px) smooth curves, brighter than their surroundings; where a
  filament crosses a cell, the filament wins in the mask.

The illumination varies by more than the contrast of the objects, so no global intensity
threshold separates the classes; local shape, texture and contrast do, which a small U-Net learns
within a couple of minutes on a CPU.

Conventions (see ``docs/design.md``): images are ``(H, W, C) uint8`` with ``C`` in {1, 3}; masks
are ``(H, W) uint8`` class indices in {0, 1, 2}. Everything is deterministic given the seed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from biomedseg.core.errors import UserError
from biomedseg.data.discovery import DATA_META

CLASSES = ["background", "cell", "filament"]

# Colour of each signal layer (background, cell, filament, debris) per RGB channel: a faint
# stain-like tint that differs between classes but keeps the grey structure dominant.
_RGB_TINT = np.array([[1.00, 1.10, 0.80, 1.00], [0.95, 0.85, 1.15, 0.95], [1.05, 1.05, 0.95, 1.05]], dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation, ``float32``."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smooth multiplicative illumination field in about [0.6, 1.3], ``(H, W) float32``."""
    coarse = rng.uniform(0.62, 1.28, size=(4, 4))
    field = ndi.zoom(coarse, (shape[0] / 4, shape[1] / 4), order=3, mode="nearest")
    return np.clip(field[: shape[0], : shape[1]], 0.5, 1.4).astype(np.float32)


def _cell_rho(shape, center, a, b, theta, wobble, phase, k):
    """Normalised elliptical radius (``< 1`` inside) in the cell's bounding box.

    Returns ``(slices, rho, u, v)`` (``u, v``: coordinates along the cell's axes) or ``None``
    when the box lies outside the image.
    """
    h, w = shape
    reach = max(a, b) * 1.35 + 2
    y0, y1 = max(int(center[0] - reach), 0), min(int(center[0] + reach) + 1, h)
    x0, x1 = max(int(center[1] - reach), 0), min(int(center[1] + reach) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return None
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy -= center[0]
    dx -= center[1]
    c, s = np.cos(theta), np.sin(theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    rho /= 1.0 + wobble * np.sin(k * np.arctan2(v, u) + phase)
    return (slice(y0, y1), slice(x0, x1)), rho, u, v


def _add_cells(rng, shape, texture, target_fraction):
    """Place cells until ``target_fraction`` of the image is covered.

    Returns ``(cell_mask (H,W) bool, cell_layer (H,W) float32)``.
    """
    mask = np.zeros(shape, dtype=bool)
    layer = np.zeros(shape, dtype=np.float32)
    centers: list[tuple[float, float, float]] = []
    area_goal = target_fraction * shape[0] * shape[1]
    for _attempt in range(300):
        if mask.sum() >= area_goal:
            break
        a = rng.uniform(9.0, 19.0)
        b = a * rng.uniform(0.65, 1.0)
        if centers and rng.random() < 0.4:  # touch an existing cell
            cy, cx, cr = centers[rng.integers(len(centers))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = (cr + 0.5 * (a + b)) * 0.9
            center = (cy + dist * np.sin(ang), cx + dist * np.cos(ang))
        else:
            center = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        got = _cell_rho(
            shape,
            center,
            a,
            b,
            rng.uniform(0, np.pi),
            rng.uniform(0.0, 0.07),
            rng.uniform(0, 2 * np.pi),
            int(rng.integers(2, 5)),
        )
        if got is None:
            continue
        sl, rho, u, v = got
        inside = rho < 1.0
        n_in = int(inside.sum())
        if n_in < 40 or (mask[sl] & inside).sum() > 0.12 * n_in:
            continue  # mostly outside the image, or overlapping another cell too much
        contrast = rng.uniform(0.10, 0.26)
        rim = rng.uniform(0.08, 0.16)
        interior = contrast * (0.8 + 0.2 * (1 - rho**2) + 0.3 * texture[sl])
        value = np.where(inside, interior, 0.0) - rim * np.exp(-(((rho - 0.97) / 0.09) ** 2))
        if rng.random() < 0.6:  # a nucleus: a darker or brighter spot inside
            off_u, off_v = rng.uniform(-0.3, 0.3, 2) * (a, b)
            nucleus = np.hypot(u - off_u, v - off_v) < 0.35 * b
            value += rng.choice([-1.0, 1.0]) * 0.07 * (nucleus & inside)
        region = rho < 1.2  # later cells lie on top of earlier ones
        layer[sl][region] = value[region]
        mask[sl] |= inside
        centers.append((center[0], center[1], 0.5 * (a + b)))
    return mask, layer


def _filament_path(rng, shape, length):
    """Centre line of a smooth random curve, ``(n, 2)`` float array inside the image."""
    h, w = shape
    n = int(length * 2)  # 0.5 px steps keep the rasterised line connected
    bend = ndi.gaussian_filter1d(rng.standard_normal(n), 25.0, mode="nearest") * 0.9
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(bend * rng.uniform(0.15, 0.4))
    start = np.array([rng.uniform(4, h - 4), rng.uniform(4, w - 4)])
    steps = 0.5 * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    pts = start + np.cumsum(steps, axis=0)
    inside = (pts[:, 0] >= 1) & (pts[:, 0] < h - 1) & (pts[:, 1] >= 1) & (pts[:, 1] < w - 1)
    stop = int(np.argmin(inside)) if not inside.all() else n
    return pts[:stop]


def _add_filaments(rng, shape, target_fraction):
    """Draw filaments until ``target_fraction`` of the image is filament.

    Returns ``(filament_mask (H,W) bool, filament_layer (H,W) float32)``.
    """
    mask = np.zeros(shape, dtype=bool)
    layer = np.zeros(shape, dtype=np.float32)
    area_goal = target_fraction * shape[0] * shape[1]
    scale = np.sqrt(shape[0] * shape[1]) / 256
    for _attempt in range(60):
        if mask.sum() >= area_goal:
            break
        length = rng.uniform(70, 170) * scale
        pts = _filament_path(rng, shape, length)
        if len(pts) < 0.8 * length:  # left the image early (0.5 px per point)
            continue
        radius = rng.uniform(1.0, 1.8)  # half width: 2-4 px wide lines
        pad = 4
        iy, ix = np.round(pts).astype(int).T
        y0, y1 = max(iy.min() - pad, 0), min(iy.max() + pad + 1, shape[0])
        x0, x1 = max(ix.min() - pad, 0), min(ix.max() + pad + 1, shape[1])
        centre = np.ones((y1 - y0, x1 - x0), dtype=bool)
        centre[iy - y0, ix - x0] = False
        dist = ndi.distance_transform_edt(centre).astype(np.float32)
        brightness = rng.uniform(0.25, 0.45)
        profile = brightness * np.clip(radius + 0.5 - dist, 0.0, 1.0)
        sl = (slice(y0, y1), slice(x0, x1))
        np.maximum(layer[sl], profile, out=layer[sl])
        mask[sl] |= dist <= radius
    return mask, layer


def _debris(rng, shape):
    """Small unlabelled round specks (bright or dark), ``(H, W) float32``."""
    layer = np.zeros(shape, dtype=np.float32)
    n = int(rng.integers(8, 20) * shape[0] * shape[1] / 256**2)
    ys, xs = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    layer[ys, xs] = rng.choice([-1.0, 1.0], n) * rng.uniform(6.0, 14.0, n)
    return ndi.gaussian_filter(layer, 1.6)


def render_sample(
    rng: np.random.Generator, size: tuple[int, int] = (256, 256), n_channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic image and its mask, consuming random numbers from ``rng`` only.

    Returns ``image`` of shape ``(H, W, n_channels)`` ``uint8`` (``n_channels`` 1 or 3) and
    ``mask`` of shape ``(H, W)`` ``uint8`` with 0 = background, 1 = cell, 2 = filament.
    """
    if n_channels not in (1, 3):
        raise UserError(f"n_channels: must be 1 or 3, not {n_channels}")
    shape = (int(size[0]), int(size[1]))
    if min(shape) < 64:
        raise UserError(f"size: synthetic images must be at least 64x64, not {shape[0]}x{shape[1]}")

    texture = _smooth_noise(rng, shape, 1.2)
    background = (rng.uniform(0.25, 0.33) + 0.035 * texture + 0.035 * _smooth_noise(rng, shape, 5.0)).astype(np.float32)
    cell_mask, cells = _add_cells(rng, shape, texture, rng.uniform(0.18, 0.25))
    fil_mask, filaments = _add_filaments(rng, shape, rng.uniform(0.026, 0.036))
    debris = _debris(rng, shape)

    layers = np.stack([background, cells, filaments, debris])  # (4, H, W)
    tint = (
        np.ones((1, 4), np.float32)
        if n_channels == 1
        else (_RGB_TINT * rng.uniform(0.95, 1.05, (3, 1)).astype(np.float32))
    )
    signal = np.einsum("ck,khw->hwc", tint, layers)
    signal *= _illumination(rng, shape)[:, :, None]
    signal = ndi.gaussian_filter(signal, (*(2 * [rng.uniform(0.6, 0.9)]), 0))
    signal = np.clip(signal, 0.0, None)
    noise_sd = np.sqrt(0.003 * signal + 0.018**2)  # shot noise + read noise
    signal += noise_sd * rng.standard_normal(signal.shape, dtype=np.float32)
    image = np.clip(signal * 255.0 + 0.5, 0, 255).astype(np.uint8)

    mask = np.zeros(shape, dtype=np.uint8)
    mask[cell_mask] = 1
    mask[fil_mask] = 2
    return image, mask


def _save_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    Image.fromarray(array).save(path)


def make_synthetic_dataset(
    out_dir, n_train: int = 24, n_test: int = 8, size: tuple[int, int] = (256, 256), seed: int = 0, n_channels: int = 1
) -> Path:
    """Write a synthetic dataset to ``out_dir`` and return ``out_dir`` as a ``Path``.

    Layout: ``images/syn_000.png`` (8-bit grey, RGB if ``n_channels == 3``), ``masks/syn_000.png``
    (8-bit class index 0/1/2) and ``dataset.json`` (classes, train/test split, source, licence,
    pixel fraction per class). Image ``i`` depends only on ``(seed, i)``; earlier ``syn_*.png``
    files that are not part of the new dataset are removed, other files are left alone.
    """
    if n_train < 1 or n_test < 0:
        raise UserError(f"synthetic dataset: need n_train >= 1 and n_test >= 0 (got {n_train}, {n_test})")
    out = Path(out_dir)
    images_dir, masks_dir = out / "images", out / "masks"
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)

    total = n_train + n_test
    width = max(3, len(str(total - 1)))
    ids = [f"syn_{i:0{width}d}" for i in range(total)]
    counts = np.zeros(len(CLASSES), dtype=np.int64)
    for i, sample_id in enumerate(ids):
        image, mask = render_sample(np.random.default_rng([seed, i]), size, n_channels)
        _save_png(images_dir / f"{sample_id}.png", image)
        _save_png(masks_dir / f"{sample_id}.png", mask)
        counts += np.bincount(mask.ravel(), minlength=len(CLASSES))[: len(CLASSES)]

    keep = set(ids)
    for folder in (images_dir, masks_dir):
        for stale in folder.glob("syn_*.png"):
            if re.fullmatch(r"syn_\d+", stale.stem) and stale.stem not in keep:
                stale.unlink()

    meta = {
        "name": "synthetic_cells",
        "classes": list(CLASSES),
        "split": {"train": ids[:n_train], "test": ids[n_train:]},
        "source": f"generated by biomedseg.data.synthetic (seed {seed})",
        "license": "CC0",
        "class_pixel_fraction": {name: round(float(c) / float(counts.sum()), 4) for name, c in zip(CLASSES, counts)},
    }
    (out / DATA_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
