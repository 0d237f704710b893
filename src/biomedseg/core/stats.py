"""Paired comparison of two runs' per-image scores: the paired bootstrap and a plain sentence.

The interval is SciPy's (``scipy.stats.bootstrap``, ``paired=True``, bias-corrected and
accelerated: ``method="BCa"``). Score vectors are ``(n,)`` float arrays with one finite value per
image, aligned: index ``i`` is the same image in both. Differences are always ``b - a`` ("how much
better is B than A"), so a positive interval means B scores higher.

The interval answers one question: is the difference between the two runs larger than the
image-to-image noise of *this* set of images? It does not cover training randomness (two seeds
of one configuration differ too); train several seeds for that.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
#: the interval's method (``scipy.stats.bootstrap``'s name for it)
METHOD = "BCa"
#: below this many images a bootstrap interval (even BCa) is known to be too narrow
FEW_IMAGES = 10
_BATCH = 1000  # resamples drawn at once: memory stays at _BATCH * n indices


def paired_differences(a, b) -> np.ndarray:
    """``b - a`` as a ``(n,)`` float64 array; ``ValueError`` unless both are finite ``(n,)``, n >= 1."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired scores need two (n,) arrays of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired scores: no images")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores: NaN or infinite values")
    return b - a


def _mean_difference(a, b, axis=-1):
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def paired_interval(
    data: tuple, statistic, n_resamples: int, seed: int, confidence: float, alternative: str = "two-sided"
) -> tuple[float, float, np.ndarray]:
    """``scipy.stats.bootstrap`` of ``statistic`` over paired samples ``data`` (image indices
    resampled, the same for every sample) with the BCa interval: ``(low, high, resampled values)``.

    Where BCa is undefined (every resample gives the same value, e.g. one image or identical
    runs) the percentile interval of the resampled values is used, which is then that value.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if len(data[0]) < 2:  # one image: every resample is that image
        value = float(statistic(*(np.moveaxis(np.asarray(x), 0, -1) for x in data), axis=-1))
        return (
            (-np.inf if alternative == "less" else value),
            (np.inf if alternative == "greater" else value),
            np.full(1, value),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        with np.errstate(invalid="ignore", divide="ignore"):
            res = stats.bootstrap(
                data,
                statistic,
                n_resamples=n_resamples,
                batch=_BATCH,
                vectorized=True,
                paired=True,
                confidence_level=confidence,
                alternative=alternative,
                method=METHOD,
                rng=np.random.default_rng(seed),
            )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    values = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    if np.isnan(low) or np.isnan(high):
        alpha = 1.0 - confidence
        q = [alpha / 2, 1.0 - alpha / 2] if alternative == "two-sided" else [alpha, 1.0 - alpha]
        low_q, high_q = (float(v) for v in np.quantile(values, q))
        low = -np.inf if alternative == "less" else low_q
        high = np.inf if alternative == "greater" else high_q
    return low, high, values


def paired_bootstrap(
    a, b, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE
) -> dict:
    """Paired bootstrap over images of the mean difference ``b - a`` (:func:`paired_interval`).

    Returns a dict: ``mean_difference`` (observed mean of ``b - a``), ``low``/``high`` (BCa interval
    at ``confidence``), ``p_value`` (two-sided: twice the smaller share of resampled means on either
    side of 0, at most 1), ``n`` (images), ``n_resamples``, ``seed``, ``confidence``, ``method``.
    Deterministic for a given ``seed``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    d = paired_differences(a, b)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if d.size == 1 or np.all(d == d[0]):  # every resample has the same mean: the interval is that point
        low = high = float(d.mean())
        means = np.full(1, low)
    else:
        low, high, means = paired_interval((a, b), _mean_difference, n_resamples, seed, confidence)
    p_value = min(1.0, 2.0 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return {
        "mean_difference": float(d.mean()),
        "low": low,
        "high": high,
        "p_value": p_value,
        "n": int(d.size),
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "confidence": float(confidence),
        "method": METHOD,
    }


def verdict(result: dict) -> str:
    """``"b"`` when the interval lies above 0 (B is better), ``"a"`` when below, else ``"none"``."""
    if result["low"] > 0:
        return "b"
    if result["high"] < 0:
        return "a"
    return "none"


def difference_sentence(
    result: dict, name_a: str = "A", name_b: str = "B", metric: str = "Dice", digits: int = 3
) -> str:
    """A plain sentence for a :func:`paired_bootstrap` result of ``b - a``, e.g.

    ``"B is better than A by 0.012 Dice (95% CI 0.004 to 0.020, 40 images)"`` or
    ``"no detectable difference between A and B: B - A = +0.003 Dice (95% CI -0.006 to 0.011, 40 images)"``.
    """
    m, low, high, n = result["mean_difference"], result["low"], result["high"], result["n"]
    ci = f"{result['confidence'] * 100:g}% CI"
    images = f"{n} image" + ("s" if n != 1 else "")
    rough = ", too few for a reliable interval" if n < FEW_IMAGES else ""
    side = verdict(result)
    if side == "b":
        text = (
            f"{name_b} is better than {name_a} by {m:.{digits}f} {metric} ({ci} {low:.{digits}f} to {high:.{digits}f}"
        )
    elif side == "a":
        text = (
            f"{name_a} is better than {name_b} by {-m:.{digits}f} {metric} "
            f"({ci} {-high:.{digits}f} to {-low:.{digits}f}"
        )
    elif low == high == m == 0:
        return f"no difference between {name_a} and {name_b}: the same {metric} on each of the {images}"
    else:
        text = (
            f"no detectable difference between {name_a} and {name_b}: {name_b} - {name_a} = {m:+.{digits}f} "
            f"{metric} ({ci} {low:+.{digits}f} to {high:+.{digits}f}"
        )
    return f"{text}, {images}{rough})"
