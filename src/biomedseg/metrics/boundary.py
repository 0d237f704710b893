"""Boundary metrics per class: HD95, average symmetric surface distance, normalised surface Dice.

The distances come from MONAI (``compute_hausdorff_distance`` with ``percentile=95``,
``compute_average_surface_distance(symmetric=True)``, ``compute_surface_dice``), imported only when
called. Definitions (MONAI's): the surface of a mask is its pixels that touch the outside
(4-neighbourhood); distances are Euclidean, in pixels, or in µm with a pixel size.

- ``hd95``: the larger of the two directed 95th percentiles of the distances from each surface
  pixel of one mask to the nearest surface pixel of the other.
- ``assd``: the mean of all those distances, both directions pooled.
- ``nsd``: normalised surface Dice at tolerance ``tau`` (Nikolov et al. 2021): the share of both
  surfaces lying within ``tau`` of the other surface.

Empty cases (as the Medical Segmentation Decathlon / Metrics Reloaded conventions): a class
absent from both prediction and truth scores ``hd95 = assd = 0`` and ``nsd = 1``; a class present
in only one of them scores the worst possible distance, the image diagonal
(``hypot(H, W)`` pixels), and ``nsd = 0``. Scores are therefore always finite.

:func:`hausdorff` is a plain scipy Hausdorff distance of two binary masks, used by the GlaS
object Hausdorff (one call per object pair, where MONAI's per-call set-up would dominate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["BoundaryOptions", "boundary_scores", "hausdorff", "worst_distance"]

#: normalised surface Dice tolerance when none is given, in pixels
DEFAULT_NSD_TOLERANCE_PX = 2.0
#: the Hausdorff percentile of ``hd95``
HD_PERCENTILE = 95.0


@dataclass(frozen=True)
class BoundaryOptions:
    """``nsd_tolerance_px``: NSD tolerance in pixels; ``nsd_tolerance_um``: in µm, used instead when
    the pixel size is known (and ignored, with the pixel tolerance, when it is not)."""

    nsd_tolerance_px: float = DEFAULT_NSD_TOLERANCE_PX
    nsd_tolerance_um: float | None = None

    def tolerance_px(self, pixel_size: Sequence[float] | None) -> float:
        if self.nsd_tolerance_um is not None and pixel_size is not None:
            return float(self.nsd_tolerance_um) / float(np.mean(pixel_size))
        return float(self.nsd_tolerance_px)


def worst_distance(shape: Sequence[int]) -> float:
    """The largest distance inside an image of ``shape`` (its diagonal), in pixels."""
    return float(np.hypot(*[float(s) for s in shape[-2:]]))


def _square(pixel_size) -> bool:
    return pixel_size is None or abs(float(pixel_size[0]) - float(pixel_size[1])) <= 1e-6 * max(pixel_size)


def _monai_scores(pred_1h: np.ndarray, true_1h: np.ndarray, spacing, tol: float) -> dict[str, np.ndarray]:
    """hd95/assd/nsd per channel of ``(C, H, W)`` boolean one-hot arrays (all channels non-empty)."""
    import warnings

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    p = torch.from_numpy(pred_1h[None].astype(np.float32))
    t = torch.from_numpy(true_1h[None].astype(np.float32))
    kw = {"include_background": True, "spacing": spacing}
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        out = {
            "hd95": compute_hausdorff_distance(p, t, percentile=HD_PERCENTILE, **kw)[0].numpy(),
            "assd": compute_average_surface_distance(p, t, symmetric=True, **kw)[0].numpy(),
        }
        if tol is not None:
            out["nsd"] = compute_surface_dice(p, t, [tol] * p.shape[1], **kw)[0].numpy()
    return {k: v.astype(np.float64) for k, v in out.items()}


def boundary_scores(pred, target, classes: Sequence[int], pixel_size=None,
                    options: BoundaryOptions = BoundaryOptions()) -> dict[int, dict[str, float]]:
    """``{class: {"hd95", "assd", "nsd" (pixels) [, "hd95_um", "assd_um"]}}`` for each of ``classes``.

    ``pred``/``target``: ``(H, W)`` index masks; ``pixel_size``: ``(y, x)`` µm or ``None`` (then no
    µm keys). Empty cases as in the module docstring.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    worst = worst_distance(pred.shape)
    tol = options.tolerance_px(pixel_size)
    out: dict[int, dict[str, float]] = {}
    both = []
    for c in classes:
        p, t = pred == c, target == c
        if p.any() and t.any():
            both.append(c)
        else:
            d = 0.0 if not (p.any() or t.any()) else worst
            out[c] = {"hd95": d, "assd": d, "nsd": 1.0 if d == 0.0 else 0.0}
    if both:
        p1h = np.stack([pred == c for c in both])
        t1h = np.stack([target == c for c in both])
        px = _monai_scores(p1h, t1h, None, tol)
        for i, c in enumerate(both):
            out[c] = {k: float(v[i]) for k, v in px.items()}
        if pixel_size is not None and not _square(pixel_size):
            um = _monai_scores(p1h, t1h, [float(s) for s in pixel_size], None)
            for i, c in enumerate(both):
                out[c].update({f"{k}_um": float(v[i]) for k, v in um.items()})
    if pixel_size is not None:
        scale = float(np.mean(pixel_size))
        for c in classes:
            for k in ("hd95", "assd"):
                out[c].setdefault(f"{k}_um", out[c][k] * scale)
    return {c: out[c] for c in classes}


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def hausdorff(a, b) -> float:
    """Hausdorff distance (pixels) between the surfaces of two non-empty binary masks; ``inf`` when
    one is empty. Computed on the bounding box of both, so small objects stay cheap."""
    from scipy import ndimage

    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if not a.any() or not b.any():
        return float("inf")
    ys, xs = np.nonzero(a | b)
    box = (slice(max(ys.min() - 1, 0), ys.max() + 2), slice(max(xs.min() - 1, 0), xs.max() + 2))
    sa, sb = _surface(a[box]), _surface(b[box])
    to_a = ndimage.distance_transform_edt(~sa)
    to_b = ndimage.distance_transform_edt(~sb)
    return float(max(to_a[sb].max(), to_b[sa].max()))
