"""Shape: the HC18 head-circumference measure, and the per-object area/perimeter table.

HC18 (van den Heuvel et al. 2018) scores the circumference of an ellipse fitted to the predicted
head against the annotated one, as the absolute difference in mm. Here the ellipse is a
least-squares fit (``skimage.measure.EllipseModel``) to the centres of the outer boundary pixels of
the largest object of the class (holes filled), in both the prediction and the truth (the truth
masks are filled ellipses, so its fit returns the annotated ellipse up to pixelation, about half
a pixel inside it -- the same for prediction and truth, so the error is unaffected); the circumference is Ramanujan's
approximation ``pi (a + b) (1 + 3h / (10 + sqrt(4 - 3h)))``, ``h = (a - b)^2 / (a + b)^2``.

Keys: ``hc_px`` (predicted), ``hc_true_px``, ``hc_error_px = |hc_px - hc_true_px|``,
``hc_error_rel`` (``hc_error_px / hc_true_px``) and, with a pixel size, ``hc_error_mm``.
Empty cases: an empty prediction has circumference 0 (its error is the whole true
circumference); an empty truth with an empty prediction scores error 0; an empty truth with a
non-empty prediction has ``hc_error_rel`` undefined (NaN).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ellipse_circumference", "fit_ellipse", "head_circumference_error", "object_table", "SHAPE_KEYS"]

SHAPE_KEYS = ("hc_px", "hc_true_px", "hc_error_px", "hc_error_rel", "hc_error_mm")


def ellipse_circumference(a: float, b: float) -> float:
    """Ramanujan's second approximation of the circumference of an ellipse of semi-axes ``a``, ``b``."""
    a, b = float(a), float(b)
    if a + b == 0:
        return 0.0
    h = (a - b) ** 2 / (a + b) ** 2
    return math.pi * (a + b) * (1.0 + 3.0 * h / (10.0 + math.sqrt(4.0 - 3.0 * h)))


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def fit_ellipse(mask) -> tuple[float, float, float, float, float] | None:
    """``(yc, xc, a, b, theta)`` of the ellipse fitted to the outer boundary of the largest object
    of a binary mask (pixels; ``a``, ``b`` semi-axes), or ``None`` when it is empty or too small."""
    from scipy import ndimage
    from skimage.measure import EllipseModel

    m = np.asarray(mask, bool)
    if m.sum() < 5:
        return None
    m = ndimage.binary_fill_holes(np.pad(_largest(m), 1))
    ys, xs = np.nonzero(m & ~ndimage.binary_erosion(m))
    if ys.size < 5:
        return None
    model = EllipseModel.from_estimate(np.column_stack([xs - 1.0, ys - 1.0]))  # (x, y) points
    if not model:
        return None
    (xc, yc), (a, b) = model.center, model.axis_lengths
    return float(yc), float(xc), float(abs(a)), float(abs(b)), float(model.theta)


def _circumference(mask) -> float:
    fit = fit_ellipse(mask)
    return 0.0 if fit is None else ellipse_circumference(fit[2], fit[3])


def head_circumference_error(pred, target, pixel_size=None) -> dict[str, float]:
    """HC18's measure for one binary prediction/truth pair (module docstring); ``pixel_size`` in µm."""
    hc, true_hc = _circumference(pred), _circumference(target)
    err = abs(hc - true_hc)
    out = {
        "hc_px": hc,
        "hc_true_px": true_hc,
        "hc_error_px": err,
        "hc_error_rel": err / true_hc if true_hc > 0 else (0.0 if hc == 0 else float("nan")),
    }
    if pixel_size is not None:
        out["hc_error_mm"] = err * float(np.mean(pixel_size)) / 1000.0
    return out


def object_table(labels, pixel_size=None) -> list[dict]:
    """One row per object of a label image: ``object`` (its id), ``area_px``, ``perimeter_px``
    (the perimeter estimate of ``skimage.measure.regionprops``), ``centroid_y``, ``centroid_x`` and,
    with a pixel size, ``area_um2``, ``perimeter_um``."""
    from biomedseg.metrics.matching import perimeters

    lab = np.asarray(labels).astype(np.int64, copy=False)
    area = np.bincount(lab.ravel()) if lab.size else np.zeros(1, np.int64)
    ids = np.nonzero(area)[0]
    ids = ids[ids > 0]
    if not ids.size:
        return []
    perim = perimeters(lab, ids)
    yy, xx = np.indices(lab.shape)
    flat = lab.ravel()
    centroids = np.column_stack(
        [np.bincount(flat, weights=yy.ravel())[ids] / area[ids], np.bincount(flat, weights=xx.ravel())[ids] / area[ids]]
    )
    scale = float(np.mean(pixel_size)) if pixel_size is not None else None
    rows = []
    for i, oid in enumerate(ids):
        row = {
            "object": int(oid),
            "area_px": int(area[oid]),
            "perimeter_px": round(float(perim[i]), 3),
            "centroid_y": round(float(centroids[i, 0]), 2),
            "centroid_x": round(float(centroids[i, 1]), 2),
        }
        if scale is not None:
            row["area_um2"] = round(float(area[oid]) * float(np.prod(pixel_size)), 4)
            row["perimeter_um"] = round(float(perim[i]) * scale, 4)
        rows.append(row)
    return rows
