"""Segmentation metrics from confusion matrices (numpy only, no torch).

Inputs are index masks: integer arrays of any equal shape (normally ``(H, W)`` ``uint8``,
class index ``0..K-1``). Everything is computed from a ``(K, K)`` ``int64`` confusion matrix
(rows = truth, columns = prediction), built with one ``np.bincount`` per image, so it is cheap
enough to run on every validation image.

Per-class counts for class ``c`` (one-vs-rest):
``tp = cm[c, c]``, ``fp = cm[:, c].sum() - tp``, ``fn = cm[c, :].sum() - tp``,
``tn = cm.sum() - tp - fp - fn``, ``support = tp + fn`` (truth pixels of the class).

Conventions for empty denominators (all scores are in ``[0, 1]``, never NaN):

- ``dice = 2tp / (2tp + fp + fn)`` and ``iou = tp / (tp + fp + fn)``; a class absent from both
  truth and prediction scores **1.0** (nothing to find, nothing wrongly found).
- ``precision = tp / (tp + fp)``; with no predicted pixels it is **1.0** if the class is also
  absent from the truth, else **0.0** (the class was missed entirely).
- ``recall = tp / (tp + fn)``; with no truth pixels it is **1.0** if the class is also absent
  from the prediction, else **0.0** (every prediction is a false positive).
- ``f1`` is the harmonic mean of precision and recall, which for pooled counts equals Dice
  (including the conventions above); both keys are kept because users look for both names.
- ``pixel_accuracy = trace(cm) / cm.sum()``; 1.0 when no pixel was counted.

"Mean" scores (``dice``, ``iou``, ...) average the per-class scores over the foreground
classes: every class except ``background`` (``background=None``: all classes). With a single
class and ``background=0`` there is no foreground and the mean falls back to all classes.
Pooled scores (``scores_from_confusion`` on a summed matrix) weight images by their pixels;
``image_dice`` averages per-image Dice so that every image counts equally.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from biomedseg.core.labels import IGNORE_INDEX

__all__ = ["confusion_matrix", "scores_from_confusion", "image_dice", "foreground_classes", "MetricAccumulator"]

SCORE_KEYS = ("dice", "iou", "precision", "recall", "f1")


def confusion_matrix(pred, target, n_classes: int, valid=None) -> np.ndarray:
    """Confusion matrix of two index masks.

    Args:
        pred: predicted class indices, integer array of any shape (normally ``(H, W)`` uint8).
        target: true class indices, same shape as ``pred``.
        n_classes: K; all values must lie in ``0..K-1``.
        valid: optional boolean array of the same shape; only pixels where it is True are
            counted (e.g. a retina field-of-view mask). Pixels whose target is
            :data:`~biomedseg.core.labels.IGNORE_INDEX` (unlabelled) are never counted.

    Returns:
        ``(K, K)`` ``int64`` array, ``cm[t, p]`` = number of pixels of truth ``t`` predicted ``p``.

    Raises:
        ValueError: shapes differ, values outside ``0..K-1``, or non-integer masks.
    """
    k = int(n_classes)
    if k < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    for name, arr in (("prediction", pred), ("target", target)):
        if arr.dtype.kind not in "biu":
            raise ValueError(f"{name} must be an integer index mask, got dtype {arr.dtype}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != pred.shape:
            raise ValueError(f"valid mask shape {valid.shape} differs from mask shape {pred.shape}")
    if k <= IGNORE_INDEX and (target == IGNORE_INDEX).any():
        labelled = target != IGNORE_INDEX
        valid = labelled if valid is None else valid & labelled
    if valid is not None:
        pred = pred[valid]
        target = target[valid]
    if pred.size == 0:
        return np.zeros((k, k), dtype=np.int64)
    for name, arr in (("prediction", pred), ("target", target)):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= k:
            bad = hi if hi >= k else lo
            raise ValueError(f"{name} contains class index {bad}, outside 0..{k - 1}")
    # Smallest integer type that holds target*K+pred keeps the temporary array small.
    idx_dtype = np.int32 if k * k < 2**31 else np.int64
    flat = target.ravel().astype(idx_dtype, copy=False) * idx_dtype(k)
    flat += pred.ravel().astype(idx_dtype, copy=False)
    cm = np.bincount(flat, minlength=k * k)
    return cm.reshape(k, k).astype(np.int64, copy=False)


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num) / float(den) if den > 0 else float(empty)


def _class_counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """tp, fp, fn, tn per class (each a ``(K,)`` int64 array)."""
    tp = np.diag(cm).astype(np.int64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return tp, fp, fn, tn


def _class_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """dice/iou/precision/recall/f1 of one class with the module's empty conventions."""
    dice = _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
    return {
        "dice": dice,
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "recall": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
        "f1": dice,
    }


def foreground_classes(n_classes: int, background: int | None = 0) -> list[int]:
    """Class indices that enter the mean scores (all but ``background``; all if none left)."""
    fg = [c for c in range(n_classes) if background is None or c != background]
    return fg or list(range(n_classes))


def _check_cm(cm) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    return cm


def _default_names(n_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(n_classes)]


def scores_from_confusion(cm, class_names: Sequence[str] | None = None, background: int | None = 0) -> dict[str, Any]:
    """Scores of a (pooled) confusion matrix.

    Args:
        cm: ``(K, K)`` integer confusion matrix (rows = truth, columns = prediction).
        class_names: K names (default ``class_0 ..``); keys of ``per_class``.
        background: index left out of the mean scores, or None to average all classes.

    Returns:
        ``{"dice", "iou", "precision", "recall", "f1"}``: float means over foreground classes;
        ``"pixel_accuracy"``: float over all classes; ``"fp"``, ``"fn"``: int sums over the
        foreground classes; ``"n_pixels"``: int; ``"per_class"``: ``{name: {dice, iou,
        precision, recall, f1 (float), tp, fp, fn, tn, support (int)}}`` for every class.
    """
    cm = _check_cm(cm)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else _default_names(k)
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    if background is not None and not 0 <= background < k:
        raise ValueError(f"background index {background} is outside 0..{k - 1}")
    tp, fp, fn, tn = _class_counts(cm)
    per_class: dict[str, dict[str, Any]] = {}
    rows = []
    for c, name in enumerate(names):
        s = _class_scores(int(tp[c]), int(fp[c]), int(fn[c]))
        rows.append(s)
        per_class[str(name)] = {
            **s,
            "tp": int(tp[c]),
            "fp": int(fp[c]),
            "fn": int(fn[c]),
            "tn": int(tn[c]),
            "support": int(tp[c] + fn[c]),
        }
    fg = foreground_classes(k, background)
    n_pixels = int(cm.sum())
    out: dict[str, Any] = {key: float(np.mean([rows[c][key] for c in fg])) for key in SCORE_KEYS}
    out["pixel_accuracy"] = _ratio(np.trace(cm), n_pixels, 1.0)
    out["fp"] = int(sum(int(fp[c]) for c in fg))
    out["fn"] = int(sum(int(fn[c]) for c in fg))
    out["n_pixels"] = n_pixels
    out["per_class"] = per_class
    return out


def _dice_per_class(cm: np.ndarray) -> np.ndarray:
    """``(K,)`` float64 Dice per class, 1.0 where the class is absent from truth and prediction."""
    tp, fp, fn, _ = _class_counts(cm)
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2.0 * tp / np.maximum(den, 1), 1.0)


def image_dice(pred, target, n_classes: int, background: int | None = 0, valid=None) -> float:
    """Mean foreground Dice of one image (every image weighs the same when averaged later).

    A class empty in both ``pred`` and ``target`` scores 1, so an empty prediction on an empty
    mask gives 1.0 (the Kaggle convention); a non-empty prediction on an empty mask gives 0.
    ``pred``/``target``: index masks of equal shape; ``valid``: optional boolean mask.
    """
    cm = confusion_matrix(pred, target, n_classes, valid=valid)
    dice = _dice_per_class(cm)
    return float(dice[foreground_classes(cm.shape[0], background)].mean())


class MetricAccumulator:
    """Accumulates a pooled confusion matrix and per-image rows over a data set.

    >>> acc = MetricAccumulator(3, ["background", "cell", "filament"])
    >>> acc.update(pred, target, image_id="img_01")            # doctest: +SKIP
    >>> acc.summary()["dice"], acc.per_image_rows()[0]["image_dice"]  # doctest: +SKIP
    """

    def __init__(self, n_classes: int, class_names: Sequence[str] | None = None, background: int | None = 0) -> None:
        self.n_classes = int(n_classes)
        self.class_names = [str(n) for n in class_names] if class_names is not None else _default_names(n_classes)
        if len(self.class_names) != self.n_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.n_classes} classes")
        if background is not None and not 0 <= background < self.n_classes:
            raise ValueError(f"background index {background} is outside 0..{self.n_classes - 1}")
        self.background = background
        self._fg = foreground_classes(self.n_classes, background)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far (e.g. at the start of a validation epoch)."""
        self.cm = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)
        self._rows: list[dict[str, Any]] = []

    def update(self, pred, target, valid=None, image_id: str | None = None) -> dict[str, Any]:
        """Add one image (index masks of equal shape; ``valid``: optional boolean mask).

        Returns the per-image row that was stored: ``id``, ``image_dice``,
        ``dice_<class>`` for each foreground class, ``fp`` and ``fn`` (pixel counts summed over
        the foreground classes) and ``n_pixels``.
        """
        cm = confusion_matrix(pred, target, self.n_classes, valid=valid)
        self.cm += cm
        dice = _dice_per_class(cm)
        _, fp, fn, _ = _class_counts(cm)
        row: dict[str, Any] = {
            "id": str(image_id) if image_id is not None else f"image_{len(self._rows)}",
            "image_dice": float(dice[self._fg].mean()),
        }
        for c in self._fg:
            row[f"dice_{self.class_names[c]}"] = float(dice[c])
        row["fp"] = int(fp[self._fg].sum())
        row["fn"] = int(fn[self._fg].sum())
        row["n_pixels"] = int(cm.sum())
        self._rows.append(row)
        return row

    def __len__(self) -> int:
        return len(self._rows)

    def summary(self) -> dict[str, Any]:
        """:func:`scores_from_confusion` of the pooled matrix plus ``image_dice`` (mean of the
        per-image Dice; NaN if no image was added) and ``n_images``."""
        out = scores_from_confusion(self.cm, self.class_names, self.background)
        out["image_dice"] = float(np.mean([r["image_dice"] for r in self._rows])) if self._rows else float("nan")
        out["n_images"] = len(self._rows)
        return out

    def per_image_rows(self) -> list[dict[str, Any]]:
        """Copies of the per-image rows, in the order the images were added."""
        return [dict(r) for r in self._rows]
