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

__all__ = ["ObjectMatch", "match_objects", "pairs_above", "best_partner", "one_to_one", "relabel"]


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
    true_ids, t_idx = np.unique(t, return_inverse=True)
    pred_ids, p_idx = np.unique(p, return_inverse=True)
    # the table includes the 0 (no object) row/column when present; drop them at the end
    table = np.zeros((true_ids.size, pred_ids.size), np.int64)
    if t.size:
        pair, count = np.unique(t_idx * pred_ids.size + p_idx, return_counts=True)
        table[pair // pred_ids.size, pair % pred_ids.size] = count
    t_area = table.sum(axis=1)
    p_area = table.sum(axis=0)
    t_keep = true_ids != 0
    p_keep = pred_ids != 0
    return ObjectMatch(true_ids[t_keep], pred_ids[p_keep], table[np.ix_(t_keep, p_keep)],
                       t_area[t_keep], p_area[p_keep])


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
    overlaps = (match.intersection.T if side == "pred" else match.intersection)
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
