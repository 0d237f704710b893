"""One row of ``predictions.csv`` per predicted image, and the per-pixel uncertainty map.

:func:`prediction_row` is what ``predict`` writes next to the masks (plain inputs: the image's
probabilities, the mask it wrote, the run's classes, and the result of
:func:`~.ood.ood_scores` when the run has a description); :func:`uncertainty_image` is the
``float16`` map of ``--uncertainty``.
"""

from __future__ import annotations

import numpy as np


def uncertainty_image(proba) -> np.ndarray:
    """``(K, H, W)`` -> ``(H, W) float16`` normalised predictive entropy (0 sure .. 1 uniform)."""
    from biomedseg.metrics.uncertainty import entropy_map

    return entropy_map(proba).astype(np.float16)


def _objects(mask: np.ndarray, c: int) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask == c, structure=np.ones((3, 3), bool))[1])


def prediction_row(
    proba, classes: list[str], background: int | None, mask=None, ood: dict | None = None, score: str | None = None
) -> dict:
    """``{"height", "width", "area_<class>", "objects_<class>" (8-connected), "mean_foreground_probability",
    "uncertainty", "ood_score", "ood_flag", "ood_reasons"}`` of one image.

    ``mask``: the written (post-processed) mask, by default the argmax; ``mean_foreground_probability``:
    the mean probability of the predicted class over the predicted foreground (empty: ``None``);
    ``uncertainty``: the per-image score ``score`` (default
    :data:`~biomedseg.metrics.uncertainty.DEFAULT_SCORE`); ``ood``: :func:`~.ood.ood_scores`'s
    result or ``None`` (columns left empty).
    """
    from biomedseg.metrics.uncertainty import DEFAULT_SCORE, IMAGE_SCORES

    p = np.asarray(proba)
    m = p.argmax(0) if mask is None else np.asarray(mask)
    row: dict = {"height": int(m.shape[0]), "width": int(m.shape[1])}
    for c, name in enumerate(classes):
        if c == background:
            continue
        row[f"area_{name}"] = int((m == c).sum())
        row[f"objects_{name}"] = _objects(m, c)
    fg = m != (background if background is not None else -1)
    picked = np.take_along_axis(p, m[None].astype(np.int64), axis=0)[0]
    row["mean_foreground_probability"] = float(picked[fg].mean()) if fg.any() else None
    row["uncertainty"] = IMAGE_SCORES[score or DEFAULT_SCORE](p, background)
    row["ood_score"] = None if ood is None else ood["score"]
    row["ood_flag"] = None if ood is None else bool(ood["flag"])
    row["ood_reasons"] = None if ood is None else "; ".join(ood["reasons"])
    return row
