"""The one place that pairs predicted with true objects (numpy/scipy only).

Objects are the non-zero ids of two label images of equal shape (``0`` = no object). Everything
the object and instance metrics need comes from one sparse contingency table built with a
single ``np.unique`` over ``(true id, predicted id)`` pairs, so images with thousands of nuclei
stay cheap:

- ``intersection[i, j]``: pixels shared by true object ``i`` and predicted object ``j``;
- ``true_area[i]``, ``pred_area[j]``: object areas;
- ``iou[i, j] = inter / (true_area[i] + pred_area[j] - inter)``.

Matching rules (each metric names the one it uses):

- :func:`pairs_above`: pairs with IoU **strictly above** a threshold ``t >= 0.5``; such a pair is
  unique on both sides (two objects cannot each overlap one object by more than half of their
  union), so no assignment step is needed -- the rule of the Data Science Bowl 2018 and of
  panoptic quality.
- :func:`best_partner`: for each object of one side, the partner of the other side with the
  largest overlap (GlaS object Dice, AJI); ``-1`` when nothing overlaps.
- :func:`one_to_one`: the assignment maximising the summed IoU (Hungarian, AJI+); pairs with
  zero overlap are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ObjectMatch",
    "match_objects",
    "pairs_above",
    "best_partner",
    "one_to_one",
    "relabel",
    "label_surface",
    "surface_points",
    "perimeters",
]


def relabel(labels) -> np.ndarray:
    """``labels`` with its non-zero ids renumbered ``1..n`` in increasing order (``int32``)."""
    labels = np.asarray(labels)
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int32)
    if ids.size and ids[0] == 0:
        return inverse
    return inverse + 1


@dataclass(frozen=True)
class ObjectMatch:
    """Overlaps of ``n_true`` true and ``n_pred`` predicted objects (see the module docstring).

    ``true_ids``/``pred_ids`` map row/column ``i`` back to the label values of the inputs.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    intersection: np.ndarray  # (n_true, n_pred) int64
    true_area: np.ndarray  # (n_true,) int64
    pred_area: np.ndarray  # (n_pred,) int64

    @property
    def n_true(self) -> int:
        return int(self.true_area.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_area.size)

    @property
    def union(self) -> np.ndarray:
        return self.true_area[:, None] + self.pred_area[None, :] - self.intersection

    @property
    def iou(self) -> np.ndarray:
        """``(n_true, n_pred)`` float64 IoU (0 where nothing overlaps)."""
        return self.intersection / np.maximum(self.union, 1)


def match_objects(true_labels, pred_labels, valid=None) -> ObjectMatch:
    """Contingency of the objects of two label images (non-negative integer arrays, equal shape).

    ``valid``: optional boolean mask; only pixels where it is True count (areas included).
    """
    t = np.asarray(true_labels)
    p = np.asarray(pred_labels)
    if t.shape != p.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    for name, arr in (("true", t), ("predicted", p)):
        if arr.dtype.kind not in "biu":
            raise ValueError(f"{name} labels must be integers, got dtype {arr.dtype}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        t, p = t[valid], p[valid]
    t = t.ravel().astype(np.int64)
    p = p.ravel().astype(np.int64)
    true_ids, t_idx = _ids(t)
    pred_ids, p_idx = _ids(p)
    # the table includes the 0 (no object) row/column when present; drop them at the end
    n_t, n_p = true_ids.size, pred_ids.size
    if n_t * n_p <= DENSE_TABLE_MAX:
        table = np.bincount(t_idx * n_p + p_idx, minlength=n_t * n_p).reshape(n_t, n_p).astype(np.int64)
    else:
        table = np.zeros((n_t, n_p), np.int64)
        pair, count = np.unique(t_idx * n_p + p_idx, return_counts=True)
        table[pair // n_p, pair % n_p] = count
    t_area = table.sum(axis=1)
    p_area = table.sum(axis=0)
    t_keep = true_ids != 0
    p_keep = pred_ids != 0
    return ObjectMatch(
        true_ids[t_keep], pred_ids[p_keep], table[np.ix_(t_keep, p_keep)], t_area[t_keep], p_area[p_keep]
    )


#: table cells counted with one ``np.bincount`` (beyond: ``np.unique`` over the pixel pairs)
DENSE_TABLE_MAX = 1 << 24
#: label values up to this are mapped to table rows by a lookup table (beyond: ``np.unique``)
LOOKUP_MAX = 1 << 22


def _ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted distinct values, index of each pixel's value)`` of non-negative labels."""
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = int(values.max())
    if values.min() < 0 or top > LOOKUP_MAX:
        ids, idx = np.unique(values, return_inverse=True)
        return ids, idx.ravel()
    present = np.bincount(values, minlength=top + 1) > 0
    ids = np.nonzero(present)[0]
    lookup = np.zeros(top + 1, np.int64)
    lookup[ids] = np.arange(ids.size)
    return ids.astype(np.int64), lookup[values]


def pairs_above(match: ObjectMatch, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the pairs with IoU > ``threshold`` (unique on both sides; ``threshold >= 0.5``)."""
    if threshold < 0.5:
        raise ValueError(f"an IoU threshold below 0.5 ({threshold}) does not give a unique matching")
    if match.n_true == 0 or match.n_pred == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = np.nonzero(match.iou > threshold)
    return rows, cols


def best_partner(match: ObjectMatch, side: str = "true", by: str = "intersection") -> np.ndarray:
    """For each object of ``side`` ("true" | "pred"), the index of its partner on the other side
    with the largest ``by`` ("intersection" | "iou"); ``-1`` where nothing overlaps."""
    score = match.intersection if by == "intersection" else match.iou
    if side == "pred":
        score = score.T
    elif side != "true":
        raise ValueError(f"side must be 'true' or 'pred', got {side!r}")
    if score.shape[0] == 0:
        return np.zeros(0, np.int64)
    if score.shape[1] == 0:
        return np.full(score.shape[0], -1, np.int64)
    best = np.argmax(score, axis=1)
    overlaps = match.intersection.T if side == "pred" else match.intersection
    best[overlaps[np.arange(score.shape[0]), best] == 0] = -1
    return best.astype(np.int64)


def one_to_one(match: ObjectMatch) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)``: the one-to-one pairing with the largest summed IoU, overlapping pairs only."""
    from scipy.optimize import linear_sum_assignment

    if match.n_true == 0 or match.n_pred == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = match.iou
    rows, cols = linear_sum_assignment(-iou)
    keep = match.intersection[rows, cols] > 0
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


# ------------------------------------------------------------------ surfaces of all objects at once
def _shifted(a: np.ndarray, dy: int, dx: int, fill=0) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]`` (``fill`` outside)."""
    out = np.full_like(a, fill)
    h, w = a.shape
    out[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)] = a[
        max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)
    ]
    return out


def label_surface(labels) -> np.ndarray:
    """Boolean ``(H, W)``: the pixels of each object with a 4-neighbour outside it (or off the image)
    -- the surface of :mod:`.boundary`, for every object of a label image in one pass."""
    lab = np.asarray(labels)
    border = np.zeros(lab.shape, bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        border |= _shifted(lab, dy, dx) != lab
    return border & (lab > 0)


def surface_points(labels, ids) -> tuple[list[np.ndarray], np.ndarray]:
    """``(surface pixel coordinates (n_i, 2) of each id, centroids (len(ids), 2))``."""
    lab = np.asarray(labels)
    ys, xs = np.nonzero(label_surface(lab))
    owner = lab[ys, xs]
    order = np.argsort(owner, kind="stable")
    ys, xs, owner = ys[order], xs[order], owner[order]
    ids = np.asarray(ids)
    start = np.searchsorted(owner, ids, side="left")
    stop = np.searchsorted(owner, ids, side="right")
    pts = [np.column_stack([ys[a:b], xs[a:b]]).astype(np.float64) for a, b in zip(start, stop)]
    flat = lab.ravel()
    top = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=top).astype(np.float64)
    yy, xx = np.indices(lab.shape)
    cy = np.bincount(flat, weights=yy.ravel(), minlength=top) / np.maximum(area, 1)
    cx = np.bincount(flat, weights=xx.ravel(), minlength=top) / np.maximum(area, 1)
    return pts, np.column_stack([cy[ids], cx[ids]])


#: weights of the border-pixel codes of the perimeter estimate (Benkrid & Crookes, as scikit-image)
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + np.sqrt(2.0)) / 2.0


def perimeters(labels, ids) -> np.ndarray:
    """The perimeter of each id of ``ids`` in ``labels``, equal to ``skimage.measure.regionprops``'
    ``perimeter`` (4-neighbourhood border pixels, each weighted by the code of its border
    neighbours of the same object) but for every object in one pass."""
    lab = np.asarray(labels).astype(np.int64, copy=False)
    border = label_surface(lab)
    code = border.astype(np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                weight = 10 if dy and dx else 2
                same = _shifted(border, dy, dx, False) & (_shifted(lab, dy, dx) == lab)
                code += weight * same
    ys, xs = np.nonzero(border)
    top = int(lab.max()) + 1 if lab.size else 1
    total = np.bincount(lab[ys, xs], weights=_PERIMETER_WEIGHTS[code[ys, xs]], minlength=top)
    return total[np.asarray(ids, dtype=np.int64)]
