"""Object and instance metrics of two label images (``0`` = no object), matched by :mod:`.matching`.

Object level (GlaS 2015, Sirinukunwattana et al. 2017):

- ``object_f1``: ``2 TP / (n_true + n_pred)`` where a TP is a true/predicted pair with IoU > 0.5
  (the issue's rule; GlaS counted a predicted object as TP when it covered more than half of its
  true object, which differs only for predictions much larger than their object).
- ``object_dice``: ``1/2 [sum_i w_i Dice(G_i, S*(G_i)) + sum_j v_j Dice(G*(S_j), S_j)]`` with
  ``w_i = |G_i| / sum |G|``, ``v_j = |S_j| / sum |S|`` and ``S*(G_i)`` the predicted object
  overlapping ``G_i`` most (Dice 0 when none overlaps).
- ``object_hausdorff``: the same weighting of Hausdorff distances (pixels); an object that
  overlaps nothing is paired with the nearest object of the other side (smallest Hausdorff).

Instance level:

- ``aji`` (Kumar et al. 2017): every true object ``G_i`` is paired with the predicted object of
  highest IoU; ``C`` sums the intersections and ``U`` the unions of those pairs, a true object
  overlapping nothing adds its area to ``U``, and every predicted object paired with no true
  object adds its area to ``U``; ``AJI = C / U``.
- ``aji_plus`` (Graham et al. 2019, HoVer-Net): the same with a one-to-one pairing of maximal
  summed IoU, so no predicted object is counted twice.
- ``pq = sq * rq`` (Kirillov et al. 2019): TP = pairs with IoU > 0.5, ``sq`` = mean IoU of
  the TPs (0 without TP), ``rq = TP / (TP + FP/2 + FN/2)``.
- ``ap`` (2018 Data Science Bowl): the mean over t = 0.50, 0.55, ..., 0.95 of
  ``TP(t) / (TP(t) + FP(t) + FN(t))``, a hit being a pair with IoU > t.

Empty cases: no object on either side scores 1 for every score and 0 for ``object_hausdorff``;
objects on one side only score 0 (and ``object_hausdorff`` = the image diagonal, the worst
distance, as the boundary metrics).
"""

from __future__ import annotations

import numpy as np

from biomedseg.metrics.matching import ObjectMatch, best_partner, match_objects, one_to_one, pairs_above, surface_points

__all__ = [
    "DSB_THRESHOLDS",
    "object_scores",
    "object_f1",
    "object_dice",
    "object_hausdorff",
    "aji",
    "aji_plus",
    "panoptic_quality",
    "dsb_average_precision",
    "OBJECT_KEYS",
    "INSTANCE_KEYS",
]

#: IoU thresholds of the 2018 Data Science Bowl score (0.50, 0.55, ..., 0.95)
DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: IoU above which a pair is a true positive (object F1, PQ)
MATCH_IOU = 0.5
OBJECT_KEYS = ("object_f1", "object_dice", "object_hausdorff")
INSTANCE_KEYS = ("aji", "aji_plus", "pq", "sq", "rq", "ap")


def _empty(match: ObjectMatch) -> float | None:
    """1.0 when neither side has an object, 0.0 when one side has none, else ``None``."""
    if match.n_true == 0 and match.n_pred == 0:
        return 1.0
    if match.n_true == 0 or match.n_pred == 0:
        return 0.0
    return None


def object_f1(match: ObjectMatch, threshold: float = MATCH_IOU) -> float:
    e = _empty(match)
    if e is not None:
        return e
    tp = len(pairs_above(match, threshold)[0])
    return 2.0 * tp / (match.n_true + match.n_pred)


def object_dice(match: ObjectMatch) -> float:
    e = _empty(match)
    if e is not None:
        return e
    inter = match.intersection
    total = 0.0
    for side, areas, other in (("true", match.true_area, match.pred_area), ("pred", match.pred_area, match.true_area)):
        partner = best_partner(match, side)
        ov = inter if side == "true" else inter.T
        idx = np.arange(areas.size)
        shared = np.where(partner >= 0, ov[idx, np.maximum(partner, 0)], 0)
        partner_area = np.where(partner >= 0, other[np.maximum(partner, 0)], 0)
        dice = 2.0 * shared / (areas + partner_area)
        total += float(np.sum(areas / areas.sum() * dice))
    return total / 2.0


def object_hausdorff(match: ObjectMatch, true_labels, pred_labels) -> float:
    """GlaS object Hausdorff (pixels) of the objects in ``match`` (label images it was built from).

    An object overlapping nothing is paired with the nearest object of the other side: the one of
    smallest Hausdorff distance among the ``NEAREST_CANDIDATES`` objects with the closest centroids.
    Distances are between the objects' surfaces (pixels of the object touching the outside,
    4-neighbourhood, as :mod:`.boundary`), found with k-d trees.
    """
    from biomedseg.metrics.boundary import worst_distance

    t = np.asarray(true_labels)
    p = np.asarray(pred_labels)
    e = _empty(match)
    if e is not None:
        return 0.0 if e == 1.0 else worst_distance(t.shape)
    t_objs, p_objs = _surfaces(t, match.true_ids), _surfaces(p, match.pred_ids)
    total = 0.0
    for side in ("true", "pred"):
        own, other = (t_objs, p_objs) if side == "true" else (p_objs, t_objs)
        areas = match.true_area if side == "true" else match.pred_area
        partner = best_partner(match, side)
        centroids = np.array([o[2] for o in other])
        for i in range(areas.size):
            if partner[i] >= 0:
                h = _pair_hausdorff(own[i], other[partner[i]])
            else:  # nothing overlaps: the nearest object of the other side
                d = np.hypot(*(centroids - own[i][2]).T)
                h = min(_pair_hausdorff(own[i], other[j]) for j in np.argsort(d)[:NEAREST_CANDIDATES])
            total += areas[i] / areas.sum() * h
    return total / 2.0


#: objects (closest centroids first) searched for the nearest partner of an object overlapping nothing
NEAREST_CANDIDATES = 5


def _surfaces(labels: np.ndarray, ids: np.ndarray) -> list[list]:
    """``[surface points (n, 2), k-d tree (built on first use), centroid]`` of each id."""
    pts, centroids = surface_points(labels, ids)
    return [[p, None, c] for p, c in zip(pts, centroids)]


#: point pairs up to which a surface distance is a dense distance matrix (beyond: k-d trees)
DENSE_PAIRS = 1 << 20


def _tree(obj: list):
    from scipy.spatial import cKDTree

    if obj[1] is None:
        obj[1] = cKDTree(obj[0])
    return obj[1]


def _pair_hausdorff(a: list, b: list) -> float:
    """Hausdorff distance between the surfaces of two objects of :func:`_surfaces`."""
    pa, pb = a[0], b[0]
    if len(pa) * len(pb) <= DENSE_PAIRS:
        from scipy.spatial.distance import cdist

        d = cdist(pa, pb)
        return float(max(d.min(axis=1).max(), d.min(axis=0).max()))
    return float(max(_tree(b).query(pa)[0].max(), _tree(a).query(pb)[0].max()))


def aji(match: ObjectMatch) -> float:
    e = _empty(match)
    if e is not None:
        return e
    partner = best_partner(match, "true", by="iou")
    has = partner >= 0
    rows = np.nonzero(has)[0]
    cols = partner[has]
    inter = match.intersection[rows, cols].sum()
    union = match.union[rows, cols].sum() + match.true_area[~has].sum()
    used = np.zeros(match.n_pred, bool)
    used[cols] = True
    union += match.pred_area[~used].sum()
    return float(inter) / float(union)


def aji_plus(match: ObjectMatch) -> float:
    e = _empty(match)
    if e is not None:
        return e
    rows, cols = one_to_one(match)
    inter = match.intersection[rows, cols].sum()
    t_used = np.zeros(match.n_true, bool)
    t_used[rows] = True
    p_used = np.zeros(match.n_pred, bool)
    p_used[cols] = True
    union = match.union[rows, cols].sum() + match.true_area[~t_used].sum() + match.pred_area[~p_used].sum()
    return float(inter) / float(union)


def panoptic_quality(match: ObjectMatch, threshold: float = MATCH_IOU) -> dict[str, float]:
    """``{"pq", "sq", "rq"}``."""
    e = _empty(match)
    if e is not None:
        return {"pq": e, "sq": e, "rq": e}
    rows, cols = pairs_above(match, threshold)
    tp = len(rows)
    fp, fn = match.n_pred - tp, match.n_true - tp
    sq = float(match.iou[rows, cols].mean()) if tp else 0.0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return {"pq": sq * rq, "sq": sq, "rq": rq}


def dsb_average_precision(match: ObjectMatch, thresholds=DSB_THRESHOLDS) -> float:
    e = _empty(match)
    if e is not None:
        return e
    iou = match.iou
    scores = []
    for t in thresholds:
        tp = int(np.count_nonzero(iou > t))  # unique pairs: t >= 0.5
        scores.append(tp / (match.n_true + match.n_pred - tp))  # TP + FP + FN
    return float(np.mean(scores))


def object_scores(
    true_labels, pred_labels, groups=("object", "instance"), valid=None, match: ObjectMatch | None = None
) -> dict[str, float]:
    """The object (``OBJECT_KEYS``) and/or instance (``INSTANCE_KEYS``) scores of two label images
    (``match``: their :func:`match_objects`, when already computed)."""
    t = np.asarray(true_labels)
    p = np.asarray(pred_labels)
    if valid is not None:
        t = np.where(valid, t, 0)
        p = np.where(valid, p, 0)
        match = None
    match = match if match is not None else match_objects(t, p)
    out: dict[str, float] = {}
    if "object" in groups:
        out.update(
            object_f1=object_f1(match), object_dice=object_dice(match), object_hausdorff=object_hausdorff(match, t, p)
        )
    if "instance" in groups:
        out.update(aji=aji(match), aji_plus=aji_plus(match), **panoptic_quality(match), ap=dsb_average_precision(match))
    return out
