"""Resampling images and masks to a working scale (and back), as pure functions.

The planner may train and predict at a *working scale* ``s <= 1`` (images shrunk by ``s``, see
:mod:`biomedseg.planning.planner`). Images are resampled with an anti-aliasing filter; masks so
that thin and small classes survive (:func:`resample_mask`); predictions are brought back to the
native size as soft scores before any argmax (:class:`biomedseg.engine.scaled.ScaledNet`).

Shapes: images ``(H, W, C)`` (any dtype, returned in the same dtype) or ``(C, H, W)`` tensors;
masks ``(H, W)`` integer class indices.
"""

from __future__ import annotations

import numpy as np

from biomedseg.core.labels import IGNORE_INDEX

#: a foreground class keeps a working-scale pixel it covers at least this fraction of, wherever
#: the majority vote left none of that class next to it (lines of 1-2 px, specks of a few px)
RESCUE_COVERAGE = 0.25


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(H, W)`` at ``scale`` (rounded, at least 1 px)."""
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def resize_tensor(x, size: tuple[int, int]):
    """``(N, C, H, W)`` float tensor -> ``(N, C, *size)``: bilinear, with an anti-aliasing filter
    when shrinking (the one resampling used for training images and at prediction)."""
    import torch.nn.functional as F

    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resample_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` image -> ``(*shape, C)`` in the same dtype (anti-aliased when shrinking)."""
    import torch

    if tuple(image.shape[:2]) == tuple(shape):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32).transpose(2, 0, 1))[None]
    y = resize_tensor(x, shape)[0].numpy().transpose(1, 2, 0)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        y = np.clip(np.rint(y), info.min, info.max)
    return np.ascontiguousarray(y.astype(image.dtype))


def class_fractions(mask: np.ndarray, shape: tuple[int, int], n_classes: int) -> np.ndarray:
    """``(K, *shape) float32``: the share of each working-scale pixel covered by each class."""
    import torch
    import torch.nn.functional as F

    out = np.zeros((n_classes, *shape), np.float32)
    for c in range(n_classes):  # one class at a time: memory of one float map, not K
        m = torch.from_numpy((mask == c).astype(np.float32))[None, None]
        out[c] = F.adaptive_avg_pool2d(m, shape)[0, 0].numpy()
    return out


def resample_mask(
    mask: np.ndarray, shape: tuple[int, int], n_classes: int | None = None, background: int | None = 0
) -> np.ndarray:
    """``(H, W)`` class-index mask -> ``(*shape) uint8``, keeping thin and small classes.

    Each working-scale pixel takes the class covering most of it, ties going to foreground
    classes (so a 2-px line shrunk by half stays a line); then every foreground class also takes
    the pixels it covers by at least :data:`RESCUE_COVERAGE` where the vote left none of it in the
    3x3 neighbourhood (a 1-px line or a speck that no pixel's majority holds). Object outlines
    are not grown: rescued pixels are only those away from the class's own voted pixels.
    Upsampling (a larger ``shape``) is by nearest neighbour. Unlabelled pixels
    (:data:`~biomedseg.core.labels.IGNORE_INDEX`) take part in no vote; a working-scale pixel less than
    half labelled stays unlabelled.
    """
    from scipy import ndimage

    if tuple(mask.shape) == tuple(shape):
        return mask.astype(np.uint8, copy=False)
    k = int(n_classes if n_classes is not None else mask.max() + 1)
    if shape[0] >= mask.shape[0] and shape[1] >= mask.shape[1]:
        ys = (np.arange(shape[0]) * mask.shape[0] // shape[0])[:, None]
        xs = (np.arange(shape[1]) * mask.shape[1] // shape[1])[None, :]
        return mask[ys, xs].astype(np.uint8)
    frac = class_fractions(mask, shape, k)
    fg = np.array([c != background for c in range(k)], np.float32)
    out = np.argmax(frac + 1e-4 * fg[:, None, None], axis=0).astype(np.uint8)
    order = np.argsort(frac.reshape(k, -1).sum(1))  # rarest class first: it wins a contested pixel
    for c in order:
        if c == background:
            continue
        near = ndimage.binary_dilation(out == c, np.ones((3, 3), bool))
        rescue = (frac[c] >= RESCUE_COVERAGE) & ~near & ((out == background) if background is not None else True)
        out[rescue] = c
    if k <= IGNORE_INDEX and (mask == IGNORE_INDEX).any():
        out[frac.sum(0) == 0] = IGNORE_INDEX
    return out
