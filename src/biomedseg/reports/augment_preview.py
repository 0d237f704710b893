"""A picture of what an augmentation preset does to training patches.

``augment_preview(data_dir, out_png, preset, n, seed)`` draws ``n`` random patches (as the
trainer would: a random window of ``patch_size``, mirror-padded when the image is smaller),
normalises them like training does, augments them with the preset and writes one row per
example: original image | original mask overlay | augmented image | augmented mask overlay.
Original and augmented image of a row share one display range, so brightness, contrast and
gamma changes stay visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError


def _display(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(C, H, W)`` float -> ``(H, W, 3)`` uint8 with the fixed range ``lo..hi``."""
    x = np.clip((np.asarray(x, np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255)
    x = np.rint(np.moveaxis(x, 0, -1)).astype(np.uint8)
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return x[:, :, :3]


def _crop(array: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random ``size x size`` window of the first two axes (mirror-padded if too small)."""
    h, w = array.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)) + ((0, 0),) * (array.ndim - 2)
        array = np.pad(array, pad, mode="symmetric")
        h, w = array.shape[:2]
    y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return array[y0 : y0 + size, x0 : x0 + size]


def augment_preview(
    data_dir, out_png, preset: str = "default", n: int = 8, seed: int = 0, patch_size: int = 256
) -> Path:
    """Write a grid of ``n`` augmented image/mask pairs of DATA folder ``data_dir`` to ``out_png``.

    Returns the path written. Unknown presets raise :class:`UserError`.
    """
    from biomedseg.core.render import class_colors, class_overlay
    from biomedseg.data.discovery import find_pairs, resolve_data
    from biomedseg.io import conform_channels, discover_palette, read_image, read_mask, write_png
    from biomedseg.transforms.basic import build_augmenter
    from biomedseg.transforms.normalize import Normalizer

    if n < 1:
        raise UserError("augment-preview: n must be >= 1")
    augmenter = build_augmenter(preset)
    source = resolve_data(data_dir)
    samples = [s for s in find_pairs(source.images_dir, source.masks_dir) if s.mask is not None]
    if not samples:
        raise UserError(f"{source.root}: no labelled images to preview")
    palette = discover_palette([s.mask for s in samples])
    colors = class_colors(max(2, len(palette.values)))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(samples), size=n, replace=len(samples) < n)

    images = {int(i): read_image(samples[i].image) for i in set(picks.tolist())}
    channels = 3 if any(im.shape[2] == 3 for im in images.values()) else 1
    patches = []
    for i in picks:
        image = conform_channels(images[int(i)], channels)
        mask, _ = read_mask(samples[i].mask, palette)
        if mask.shape != image.shape[:2]:
            raise UserError(f"{samples[i].mask}: mask size {mask.shape} differs from the image {image.shape[:2]}")
        both = np.concatenate([image.astype(np.float32), mask[:, :, None].astype(np.float32)], axis=2)
        both = _crop(both, patch_size, rng)
        patches.append((both[:, :, :-1], both[:, :, -1].astype(np.int64)))
    normalizer = Normalizer.fit(p for p, _ in patches)

    rows = []
    gap = 4
    for image, mask in patches:
        x = normalizer(image)
        xa, ma = augmenter(x.copy(), mask.copy(), rng)
        lo, hi = (float(v) for v in np.percentile(x, [1.0, 99.0]))
        if hi <= lo:
            lo, hi = float(x.min()), float(x.max()) + 1e-6
        orig, aug = _display(x, lo, hi), _display(xa, lo, hi)
        panels = [orig, class_overlay(orig, mask, colors), aug, class_overlay(aug, np.asarray(ma), colors)]
        h = max(p.shape[0] for p in panels)
        row = []
        for p in panels:  # a padding transform may change the augmented size
            canvas = np.full((h, p.shape[1], 3), 255, np.uint8)
            canvas[: p.shape[0]] = p
            row.extend([canvas, np.full((h, gap, 3), 255, np.uint8)])
        rows.append(np.concatenate(row[:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    grid = []
    for r in rows:
        canvas = np.full((r.shape[0], width, 3), 255, np.uint8)
        canvas[:, : r.shape[1]] = r
        grid.extend([canvas, np.full((gap, width, 3), 255, np.uint8)])
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(out, np.concatenate(grid[:-1], axis=0))
    return out
