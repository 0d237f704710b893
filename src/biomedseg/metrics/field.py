"""Field metrics of one data set, image by image: boundary, object, instance, thin and shape groups.

:class:`FieldAccumulator` is to the field metrics what :class:`~biomedseg.metrics.pixel.MetricAccumulator`
is to the pixel ones: ``update`` one :class:`ImagePair` at a time, then ``summary`` (means over
images) and ``object_rows`` (the per-object table). For each foreground class ``c``:

- objects: truth instance ids inside ``target == c`` when the image has an instance mask, else the
  8-connected components of ``target == c``; predicted instances from ``pred_instances[c]`` (the
  watershed post-processing) when given, else the 8-connected components of ``pred == c``;
- Rand/information segments: the 4-connected components of ``target == c`` / ``pred == c`` (so a
  one-pixel diagonal membrane separates two cells, as in the ISBI 2012 labels).

Pixels outside ``valid`` (e.g. DRIVE's field of view) are set to the background first. Per-image
values are means over the foreground classes; with more than one foreground class, each class's
value is also kept as ``<key>_<class>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from biomedseg.metrics.boundary import BoundaryOptions, boundary_scores
from biomedseg.metrics.choice import GROUPS
from biomedseg.metrics.matching import match_objects
from biomedseg.metrics.objects import object_scores
from biomedseg.metrics.pixel import foreground_classes
from biomedseg.metrics.shape import head_circumference_error, object_table
from biomedseg.metrics.thin import cldice, rand_information_scores

__all__ = ["FieldOptions", "ImagePair", "FieldAccumulator", "EIGHT", "FOUR"]

EIGHT = np.ones((3, 3), bool)
FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
#: keys that are better when lower (the others are better when higher)
LOWER_IS_BETTER = (
    "hd95",
    "assd",
    "hd95_um",
    "assd_um",
    "object_hausdorff",
    "vi",
    "hc_error_px",
    "hc_error_rel",
    "hc_error_mm",
    "hc_px",
    "hc_true_px",
)


@dataclass(frozen=True)
class FieldOptions:
    """``groups``: the metric groups to compute (:data:`~biomedseg.metrics.choice.GROUPS`);
    ``boundary``: NSD tolerance."""

    groups: tuple[str, ...] = ("pixel", "boundary")
    boundary: BoundaryOptions = BoundaryOptions()

    @property
    def active(self) -> bool:
        return any(g != "pixel" for g in self.groups)


@dataclass
class ImagePair:
    """One image's prediction and truth: ``(H, W)`` index masks, optional ``valid`` mask, pixel
    size ``(y, x)`` µm, truth instance ids ``(H, W)`` and predicted instances ``{class: labels}``."""

    image_id: str
    pred: np.ndarray
    target: np.ndarray
    valid: np.ndarray | None = None
    pixel_size: Sequence[float] | None = None
    true_instances: np.ndarray | None = None
    pred_instances: dict[int, np.ndarray] | None = None
    #: False when the image's truth objects are unknown (a missing or bad instance mask): its
    #: object and instance scores are NaN and it adds no row to the per-object table
    score_objects: bool = True


def _label(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.label(mask, structure=structure)[0]


def _objects(pair: ImagePair, c: int, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) of class ``c``."""
    from biomedseg.metrics.matching import relabel

    if pair.true_instances is not None:
        t = relabel(np.where(target == c, pair.true_instances, 0))
    else:
        t = _label(target == c, EIGHT)
    p = (pair.pred_instances or {}).get(c)
    p = relabel(np.where(pred == c, p, 0)) if p is not None else _label(pred == c, EIGHT)
    return t, p


@dataclass
class FieldAccumulator:
    """Field scores image by image (module docstring)."""

    class_names: Sequence[str]
    background: int | None = 0
    options: FieldOptions = FieldOptions()
    rows: list[dict[str, Any]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fg = foreground_classes(len(self.class_names), self.background)

    def update(self, pair: ImagePair) -> dict[str, Any]:
        """Score one image; returns its row (``id`` and the scores of the chosen groups)."""
        pred, target = np.asarray(pair.pred), np.asarray(pair.target)
        if pair.valid is not None:
            fill = self.background if self.background is not None else 0
            pred = np.where(pair.valid, pred, fill)
            target = np.where(pair.valid, target, fill)
        per_class = {c: {} for c in self.fg}
        groups = self.options.groups
        if "boundary" in groups:
            for c, scores in boundary_scores(pred, target, self.fg, pair.pixel_size, self.options.boundary).items():
                per_class[c].update(scores)
        for c in self.fg:
            per_class[c].update(self._class_scores(pair, c, pred, target))
        row = {"id": pair.image_id}
        keys = [k for k in per_class[self.fg[0]]] if self.fg else []
        for k in keys:
            vals = [per_class[c][k] for c in self.fg]
            row[k] = float(np.nanmean(vals)) if not all(np.isnan(vals)) else float("nan")
            if len(self.fg) > 1:
                row.update({f"{k}_{self.class_names[c]}": per_class[c][k] for c in self.fg})
        self.rows.append(row)
        return row

    def _class_scores(self, pair: ImagePair, c: int, pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
        groups = self.options.groups
        out: dict[str, float] = {}
        if "thin" in groups:
            out.update(rand_information_scores(_label(target == c, FOUR), _label(pred == c, FOUR)))
            out["cldice"] = cldice(pred == c, target == c)
        if "shape" in groups:
            out.update(head_circumference_error(pred == c, target == c, pair.pixel_size))
            if pair.pixel_size is None:
                out["hc_error_mm"] = float("nan")
        obj_groups = tuple(g for g in ("object", "instance") if g in groups)
        if self.options.active and not pair.score_objects:
            out.update({k: float("nan") for g in obj_groups for k in GROUPS[g]})
        elif self.options.active:
            t_lab, p_lab = _objects(pair, c, pred, target)
            match = match_objects(t_lab, p_lab)
            if obj_groups:
                out.update(object_scores(t_lab, p_lab, obj_groups, match=match))
            self._add_objects(pair, c, t_lab, p_lab, match)
        return out

    def _add_objects(self, pair: ImagePair, c: int, t_lab: np.ndarray, p_lab: np.ndarray, m) -> None:
        """Rows of ``per_object.csv`` for class ``c``: each true and predicted object with its best IoU."""
        iou = m.iou
        best = {
            "truth": iou.max(axis=1) if m.n_pred else np.zeros(m.n_true),
            "prediction": iou.max(axis=0) if m.n_true else np.zeros(m.n_pred),
        }
        for source, lab in (("truth", t_lab), ("prediction", p_lab)):
            for i, r in enumerate(object_table(lab, pair.pixel_size)):
                self.objects.append(
                    {
                        "id": pair.image_id,
                        "class": self.class_names[c],
                        "source": source,
                        **r,
                        "best_iou": round(float(best[source][i]), 4),
                    }
                )

    def summary(self) -> dict[str, Any]:
        """``{key: mean over images (NaN-skipping)}`` for every score key, plus ``n_scored`` per key."""
        out: dict[str, Any] = {}
        keys = [k for k in (self.rows[0] if self.rows else {}) if k != "id"]
        for k in keys:
            vals = np.array([r.get(k, np.nan) for r in self.rows], dtype=float)
            ok = ~np.isnan(vals)
            out[k] = float(vals[ok].mean()) if ok.any() else float("nan")
        return out

    def object_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.objects]


def metric_direction(key: str) -> str:
    """``"lower"`` or ``"higher"``: which way ``key`` (a per-image column, maybe ``<key>_<class>``) is
    better; the longest known metric name that ``key`` starts with decides."""
    known = [k for keys in GROUPS.values() for k in keys] + ["hd95_um", "assd_um"]
    hits = [k for k in known if key == k or key.startswith(k + "_")]
    base = max(hits, key=len) if hits else key
    return "lower" if base in LOWER_IS_BETTER else "higher"
