"""Boundary metrics per class: HD95, average symmetric surface distance, normalised surface Dice.

Definitions are MONAI's (``compute_hausdorff_distance`` with ``percentile=95``,
``compute_average_surface_distance(symmetric=True)``, ``compute_surface_dice``): the surface of a
mask is its pixels that touch the outside (4-neighbourhood); distances are Euclidean, from each
surface pixel of one mask to the nearest surface pixel of the other, in pixels, or in µm with a
pixel size. They are computed here from two scipy distance transforms per class shared by the
three scores: MONAI's functions took about 0.7 s per call per class on a 512x512 mask, which would
make boundary metrics -- on in every evaluation -- cost more than the prediction. The tests check
that the values equal MONAI's.

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


def _directed(a: np.ndarray, b: np.ndarray, sampling) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface pixel of ``a`` to the surface of ``b``, and the other way round."""
    from scipy import ndimage

    sa, sb = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~sa, sampling=sampling)
    return to_b[sa], to_a[sb]


def _scores(d_ab: np.ndarray, d_ba: np.ndarray, tol: float | None) -> dict[str, float]:
    """hd95, assd (and nsd at ``tol``) of two non-empty directed distance sets."""
    out = {
        "hd95": float(max(np.percentile(d_ab, HD_PERCENTILE), np.percentile(d_ba, HD_PERCENTILE))),
        "assd": float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)),
    }
    if tol is not None:
        out["nsd"] = float((np.count_nonzero(d_ab <= tol) + np.count_nonzero(d_ba <= tol)) / (d_ab.size + d_ba.size))
    return out


def _class_scores(p: np.ndarray, t: np.ndarray, pixel_size, tol: float, worst: float) -> dict[str, float]:
    """One class's scores (``p``, ``t``: boolean masks), empty cases as in the module docstring."""
    if not (p.any() and t.any()):
        d = 0.0 if not (p.any() or t.any()) else worst
        out = {"hd95": d, "assd": d, "nsd": 1.0 if d == 0.0 else 0.0}
        if pixel_size is not None:
            out.update(hd95_um=d * float(np.mean(pixel_size)), assd_um=d * float(np.mean(pixel_size)))
        return out
    ys, xs = np.nonzero(p | t)  # the bounding box of both, one pixel of margin: the same distances, less work
    box = (slice(max(ys.min() - 1, 0), ys.max() + 2), slice(max(xs.min() - 1, 0), xs.max() + 2))
    p, t = p[box], t[box]
    out = _scores(*_directed(p, t, None), tol)
    if pixel_size is not None:
        um = _scores(*_directed(p, t, [float(x) for x in pixel_size]), None)
        out.update(hd95_um=um["hd95"], assd_um=um["assd"])
    return out


def boundary_scores(
    pred, target, classes: Sequence[int], pixel_size=None, options: BoundaryOptions = BoundaryOptions()
) -> dict[int, dict[str, float]]:
    """``{class: {"hd95", "assd", "nsd" (pixels) [, "hd95_um", "assd_um"]}}`` for each of ``classes``.

    ``pred``/``target``: ``(H, W)`` index masks; ``pixel_size``: ``(y, x)`` µm or ``None`` (then no
    µm keys; with one the image diagonal of the empty cases is converted with the mean size). Empty
    cases as in the module docstring.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    worst = worst_distance(pred.shape)
    tol = options.tolerance_px(pixel_size)
    return {c: _class_scores(pred == c, target == c, pixel_size, tol, worst) for c in classes}


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
