"""Paired comparison of two runs' per-image scores: the paired bootstrap and a plain sentence.

numpy only. Score vectors are ``(n,)`` float arrays with one finite value per image, aligned:
index ``i`` is the same image in both. Differences are always ``b - a`` ("how much better is B
than A"), so a positive interval means B scores higher.

The interval answers one question: is the difference between the two runs larger than the
image-to-image noise of *this* set of images? It does not cover training randomness (two seeds
of one configuration differ too); train several seeds for that.
"""

from __future__ import annotations

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
#: below this many images a percentile bootstrap interval is known to be too narrow
FEW_IMAGES = 10
_CHUNK = 1000  # resamples drawn at once: memory stays at _CHUNK * n indices


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


def bootstrap_means(values, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement) of ``values (n,)``: ``(n_resamples,)``.

    Deterministic for a given ``seed``; drawn in chunks so memory does not grow with ``n_resamples``.
    """
    values = np.asarray(values, dtype=np.float64)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n = values.size
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def paired_bootstrap(a, b, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                     confidence: float = DEFAULT_CONFIDENCE) -> dict:
    """Paired bootstrap over images of the mean difference ``b - a``.

    Image indices are resampled with replacement, the same indices for both runs (so resampling the
    per-image differences). Returns a dict: ``mean_difference`` (observed mean of ``b - a``),
    ``low``/``high`` (percentile interval at ``confidence``), ``p_value`` (two-sided: twice the
    smaller share of resampled means on either side of 0, at most 1; it is below ``1 - confidence``
    when the interval excludes 0), ``n`` (images), ``n_resamples``, ``seed``, ``confidence``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    d = paired_differences(a, b)
    means = bootstrap_means(d, n_resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    p_value = min(1.0, 2.0 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return {"mean_difference": float(d.mean()), "low": float(low), "high": float(high), "p_value": p_value,
            "n": int(d.size), "n_resamples": int(n_resamples), "seed": int(seed), "confidence": float(confidence)}


def verdict(result: dict) -> str:
    """``"b"`` when the interval lies above 0 (B is better), ``"a"`` when below, else ``"none"``."""
    if result["low"] > 0:
        return "b"
    if result["high"] < 0:
        return "a"
    return "none"


def difference_sentence(result: dict, name_a: str = "A", name_b: str = "B", metric: str = "Dice",
                        digits: int = 3) -> str:
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
        text = f"{name_b} is better than {name_a} by {m:.{digits}f} {metric} ({ci} {low:.{digits}f} to {high:.{digits}f}"
    elif side == "a":
        text = (f"{name_a} is better than {name_b} by {-m:.{digits}f} {metric} "
                f"({ci} {-high:.{digits}f} to {-low:.{digits}f}")
    elif low == high == m == 0:
        return f"no difference between {name_a} and {name_b}: the same {metric} on each of the {images}"
    else:
        text = (f"no detectable difference between {name_a} and {name_b}: {name_b} - {name_a} = {m:+.{digits}f} "
                f"{metric} ({ci} {low:+.{digits}f} to {high:+.{digits}f}")
    return f"{text}, {images}{rough})"
