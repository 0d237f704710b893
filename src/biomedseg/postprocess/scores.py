"""Scores and the adoption rule shared by :mod:`~biomedseg.workflows.tune_postprocess` and
:mod:`~biomedseg.postprocess.gates`.

Everything works on the validation cache (:class:`_Cached`: probabilities, target and, for a
model with an image-level head, the classifier's image probability) and on lists of
``(h, w) uint8`` class-index masks predicted for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biomedseg.core.stats import paired_interval

# A tuned stage is adopted only when it is a reliable gain: validation sets are small (often under
# 10 images) and a grid search on them overfits. Measured: without this rule, tuning on 8-10 val
# images lowered test Dice on dsb2018_nuclei (-0.008) and darkfield_bacteria (-0.013).
BOOTSTRAP_SAMPLES = 500
MIN_WIN_SHARE = 0.9  # confidence of the one-sided BCa interval (over the val images) that the stage helps
MIN_MEAN_GAIN = 0.002
#: recorded in ``postprocess.yaml`` ``tuning.adoption_rule``
ADOPTION_RULE = (
    f"a stage is kept when the one-sided {MIN_WIN_SHARE:.0%} BCa bootstrap interval of its validation "
    f"Dice gain ({BOOTSTRAP_SAMPLES} resamples of the images) lies above 0 and the gain is >= "
    f"{MIN_MEAN_GAIN}"
)


@dataclass
class _Cached:
    """One validation image: ``proba (K, h, w) float16``, ``target (h, w) uint8``, the
    downsampling ``factor``, the classifier head's probability that the image contains
    foreground (``None`` without a head), and a sample of its full-resolution labelled pixels
    (``pixels`` ``(K, m)`` probabilities, ``labels`` ``(m,)``) for the temperature fit."""

    id: str
    proba: np.ndarray  # (K, h, w) float16
    target: np.ndarray  # (h, w) uint8
    factor: int
    image_probability: float | None = None
    pixels: np.ndarray | None = None  # (K, m) float32, full resolution
    labels: np.ndarray | None = None  # (m,) int64


def _dice_from_counts(tp, fp, fn):
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2.0 * tp / np.maximum(den, 1), 1.0)


def _counts(pred: np.ndarray, target: np.ndarray, c: int) -> tuple[int, int, int]:
    p, t = pred == c, target == c
    tp = int(np.count_nonzero(p & t))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp


def _per_image_counts(masks, cache, fg) -> np.ndarray:
    """``(n_images, n_fg, 3)`` int64 tp, fp, fn per image and foreground class."""
    return np.array([[_counts(m, it.target, c) for c in fg] for m, it in zip(masks, cache)], dtype=np.int64)


def _pooled_from_counts(counts: np.ndarray) -> np.ndarray:
    """Mean pooled foreground Dice of ``counts (..., n_images, n_fg, 3)`` summed over images."""
    tot = counts.sum(axis=-3)
    tp, fp, fn = tot[..., 0], tot[..., 1], tot[..., 2]
    den = 2 * tp + fp + fn
    d = np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)
    return d.mean(axis=-1)


def _pooled_gain(before, after, axis=-1):
    """Pooled-Dice gain of resampled counts; scipy hands them over as ``(n_fg, 3, ..., n)``."""
    tb, ta = np.sum(before, axis=axis), np.sum(after, axis=axis)  # (n_fg, 3, ...)

    def dice(t):
        den = 2 * t[:, 0] + t[:, 1] + t[:, 2]
        return np.where(den > 0, 2 * t[:, 0] / np.maximum(den, 1), 1.0).mean(axis=0)

    return dice(ta) - dice(tb)


def _mean_gain(before, after, axis=-1):
    return np.mean(after, axis=axis) - np.mean(before, axis=axis)


def reliable_gain(before: np.ndarray, after: np.ndarray, pooled: bool = True, seed: int = 0) -> bool:
    """Bootstrap over validation images: does ``after`` beat ``before`` reliably?

    ``before``/``after``: per-image counts ``(n, n_fg, 3)`` (``pooled=True``: pooled Dice) or
    per-image scores ``(n,)`` (mean). True when the lower end of the one-sided ``MIN_WIN_SHARE``
    BCa interval of the gain (:func:`biomedseg.core.stats.paired_interval`) is above 0 and the
    observed gain is at least ``MIN_MEAN_GAIN``.
    """
    n = len(before)
    if n == 0:
        return False
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    stat = _pooled_gain if pooled else _mean_gain
    gain = float(stat(np.moveaxis(before, 0, -1), np.moveaxis(after, 0, -1)))
    if gain < MIN_MEAN_GAIN:
        return False
    low, _, _ = paired_interval((before, after), stat, BOOTSTRAP_SAMPLES, seed, MIN_WIN_SHARE, "greater")
    return bool(low > 0)


def _pooled_dice(masks, cache, fg) -> tuple[float, dict[int, tuple[int, int, int]]]:
    counts = {c: np.zeros(3, np.int64) for c in fg}
    for m, item in zip(masks, cache):
        for c in fg:
            counts[c] += _counts(m, item.target, c)
    d = [float(_dice_from_counts(*counts[c])) for c in fg]
    return float(np.mean(d)), {c: tuple(int(v) for v in counts[c]) for c in fg}


def _image_dice(mask, target, fg) -> float:
    return float(np.mean([float(_dice_from_counts(*_counts(mask, target, c))) for c in fg]))
