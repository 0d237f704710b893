"""Class statistics of the data audit over a whole data set: :func:`object_summary` (object
areas per class) and :func:`class_weights` (from pooled pixel counts).

The per-file measurements they aggregate live in :mod:`biomedseg.audit.mask_measurements`
(with :mod:`biomedseg.data.mask_values`) and :mod:`biomedseg.audit.image_measurements`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AREA_PERCENTILES", "SPECK_AREA", "class_weights", "object_summary"]

#: Objects with at most this many pixels are reported as possible annotation specks.
SPECK_AREA = 4
#: Percentiles of object areas reported per class.
AREA_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def object_summary(areas: np.ndarray, n_images: int) -> dict:
    """Count, percentiles, log2 histogram and recommended minimum area of object areas.

    The recommended minimum object area (for removing small predicted objects) is half the
    1st percentile of annotated object areas (at least 1 px; ``None`` with < 10 objects).
    ``areas``: ``(N,)`` object areas in pixels (integers) pooled over ``n_images`` masks.
    """
    areas = np.asarray(areas, np.int64)
    out: dict = {"count": int(areas.size), "per_image_mean": float(areas.size / n_images) if n_images else 0.0}
    if areas.size == 0:
        out.update(percentiles={}, histogram={"edges": [], "counts": []}, recommended_min_area=None, specks=0)
        return out
    pct = np.percentile(areas, AREA_PERCENTILES)
    top = int(np.ceil(np.log2(areas.max() + 1))) + 1
    edges = [0] + [2**i for i in range(top)]
    counts = np.histogram(areas, bins=np.array(edges) + 0.5)[0]
    out.update(
        percentiles={str(p): float(v) for p, v in zip(AREA_PERCENTILES, pct)},
        mean=float(areas.mean()),
        max=int(areas.max()),
        min=int(areas.min()),
        histogram={"edges": [e + 1 for e in edges[:-1]], "counts": counts.tolist()},
        recommended_min_area=(max(1, int(0.5 * pct[0])) if areas.size >= 10 else None),
        specks=int(np.count_nonzero(areas <= SPECK_AREA)),
    )
    return out


def class_weights(counts) -> dict[str, list[float]]:
    """Class weights from pooled pixel counts, as ``losses.class_weights_from_counts`` builds
    them: ``inverse`` = ``1 - f_c``; ``median`` = ``median(f) / f_c`` (absent classes 0, cap
    100); both rescaled to mean 1 over the non-zero weights. ``counts``: ``(K,)`` pixels per class."""
    counts = np.asarray(counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1.0)
    inverse = 1.0 - freq
    present = freq > 0
    med = np.median(freq[present]) if present.any() else 1.0
    median = np.minimum(np.where(present, med / np.maximum(freq, 1e-12), 0.0), 100.0)
    out = {}
    for name, w in (("inverse", inverse), ("median", median)):
        pos = w[w > 0]
        w = w / max(pos.mean() if pos.size else 1.0, 1e-12)
        out[name] = [round(float(v), 6) for v in w]
    return out
