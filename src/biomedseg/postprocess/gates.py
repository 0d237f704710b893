"""The empty-mask gate of ``tune-postprocess`` (stage 3 of :mod:`~biomedseg.workflows.tune_postprocess`).

Two steps on the validation cache, each adopted only under the rule of the other stages (the
mean per-image Dice ``image_dice`` improves in the bootstrap sense of
:func:`~biomedseg.postprocess.scores.reliable_gain`, and the pooled Dice does not drop by
more than 0.001):

a. a minimum total foreground area or a minimum maximum foreground probability, whichever
   maximises ``image_dice`` (:func:`_tune_gate`);
b. for a model with an image-level head (``--classifier-head``): a minimum classifier
   probability, tuned on top of the result of (a) (:func:`_tune_classifier_gate`). The report
   records ``image_dice`` without it (``image_dice_without_classifier_gate``: after (a)) and
   with the best threshold (``image_dice_with_classifier_gate``), adopted or not.

Thresholds are midpoints between observed values, so the tuned gate separates the validation
images exactly where it helps.
"""

from __future__ import annotations

import numpy as np

from biomedseg.postprocess.ops import GatingConfig, is_gated
from biomedseg.postprocess.scores import _image_dice, _pooled_dice, reliable_gain


def _midpoints(values: np.ndarray) -> list[tuple[float, float]]:
    """``(v, cut)`` per distinct value ``v``: ``cut`` lies between ``v`` and the next value."""
    u = np.unique(values)
    nxt = np.r_[u[1:], u[-1:] * 1.0 + 1.0] if len(u) else u
    return [(float(v), float((v + n) / 2)) for v, n in zip(u, nxt)]


def _empty(mask: np.ndarray, bg: int | None) -> np.ndarray:
    return np.zeros_like(mask) + (bg or 0)


def _tune_gate(cache, masks, fg, bg) -> tuple[GatingConfig, float, float]:
    """Best area / max-probability gate: ``(gating in cache pixels, image_dice without, with)``."""
    raw = np.array([_image_dice(m, it.target, fg) for m, it in zip(masks, cache)])
    empty = np.array([_image_dice(_empty(m, bg), it.target, fg) for m, it in zip(masks, cache)])
    area = np.array([int(np.isin(m, fg).sum()) for m in masks], dtype=np.int64)
    maxp = np.array([float(it.proba[fg].astype(np.float32).max()) for it in cache])
    without = float(raw.mean())
    best = (without, GatingConfig())
    for v, cut in _midpoints(area):
        score = float(np.where(area <= v, empty, raw).mean())
        if score > best[0] + 1e-9:
            best = (score, GatingConfig(min_total_area=int(cut) + 1))
    for v, cut in _midpoints(maxp):
        if cut > 1.0:
            continue
        score = float(np.where(maxp <= v, empty, raw).mean())
        if score > best[0] + 1e-9:
            best = (score, GatingConfig(min_max_probability=round(cut, 4)))
    return best[1], without, best[0]


def _tune_classifier_gate(cache, masks, fg, bg) -> tuple[float | None, float, float]:
    """Best minimum classifier probability for ``masks`` (already gated by step a):
    ``(threshold or None, image_dice without, image_dice with)``."""
    raw = np.array([_image_dice(m, it.target, fg) for m, it in zip(masks, cache)])
    empty = np.array([_image_dice(_empty(m, bg), it.target, fg) for m, it in zip(masks, cache)])
    prob = np.array([float(it.image_probability) for it in cache])
    without = float(raw.mean())
    best = (without, None)
    for v, cut in _midpoints(prob):
        if cut > 1.0:
            continue
        score = float(np.where(prob <= v, empty, raw).mean())
        if score > best[0] + 1e-9:
            best = (score, round(cut, 6))
    return best[1], without, best[0]


def _gated(mask, item, gating: GatingConfig, fg) -> bool:
    """Whether ``gating`` (cache pixels) empties the cached image's ``mask``."""
    area = int(np.isin(mask, fg).sum())
    maxp = float(item.proba[fg].astype(np.float32).max())
    return is_gated(gating, area, maxp, item.image_probability)


def _apply(masks, cache, gating: GatingConfig, fg, bg) -> list[np.ndarray]:
    return [_empty(m, bg) if _gated(m, it, gating, fg) else m for m, it in zip(masks, cache)]


def _adopt(before, after, cache, fg) -> bool:
    """The adoption rule for a gate: image_dice reliably better, pooled Dice not lower."""
    keeps_pooled = _pooled_dice(after, cache, fg)[0] >= _pooled_dice(before, cache, fg)[0] - 1e-3
    s0 = np.array([_image_dice(m, it.target, fg) for m, it in zip(before, cache)])
    s1 = np.array([_image_dice(m, it.target, fg) for m, it in zip(after, cache)])
    return bool(keeps_pooled and reliable_gain(s0, s1, pooled=False))


def tune_gating(cache, masks, fg, bg, adopted: dict) -> tuple[GatingConfig, dict]:
    """Steps (a) and (b) of the module docstring on ``masks`` (the tuned, ungated masks).

    Records the adoption decisions in ``adopted`` (``gating``, ``classifier_gating``) and returns
    ``(gating in cache pixels, report)``; the report holds ``image_dice_without_gating``,
    ``image_dice_with_gating``, ``dice_with_gating`` and, with a head, ``classifier_head``,
    ``classifier_gate_threshold``, ``image_dice_without_classifier_gate``,
    ``image_dice_with_classifier_gate``.
    """
    gating, imd_without, _ = _tune_gate(cache, masks, fg, bg)
    if gating.active:
        adopted["gating"] = _adopt(masks, _apply(masks, cache, gating, fg, bg), cache, fg)
        if not adopted["gating"]:
            gating = GatingConfig()
    report: dict = {}
    if cache and all(it.image_probability is not None for it in cache):
        base = _apply(masks, cache, gating, fg, bg)
        thr, cls_without, cls_with = _tune_classifier_gate(cache, base, fg, bg)
        adopted["classifier_gating"] = False
        if thr is not None:
            trial = gating.model_copy(update={"min_classifier_probability": thr})
            adopted["classifier_gating"] = _adopt(base, _apply(masks, cache, trial, fg, bg), cache, fg)
            if adopted["classifier_gating"]:
                gating = trial
        report.update(
            {
                "classifier_head": True,
                "classifier_gate_threshold": thr,
                "image_dice_without_classifier_gate": round(cls_without, 6),
                "image_dice_with_classifier_gate": round(cls_with, 6),
            }
        )
    final = _apply(masks, cache, gating, fg, bg)
    report.update(
        {
            "image_dice_without_gating": round(imd_without, 6),
            "image_dice_with_gating": round(
                float(np.mean([_image_dice(m, it.target, fg) for m, it in zip(final, cache)])), 6
            ),
            "dice_with_gating": round(_pooled_dice(final, cache, fg)[0], 6),
        }
    )
    return gating, report
