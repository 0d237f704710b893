"""Calibration of softmax probabilities: expected calibration error and temperature scaling.

numpy/scipy only. Pixels are samples: a ``(K, H, W)`` probability map is flattened to
``(K, N)``; anything larger than ``max_pixels`` is subsampled with a fixed seed (the same pixels
on every call), so the numbers are deterministic and the cost bounded.

- :func:`expected_calibration_error`: top-label ECE with ``n_bins`` equal-width confidence bins,
  ``sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|``.
- :func:`fit_temperature`: the ``T`` minimising the negative log-likelihood of
  ``softmax(logits / T)`` (searched over ``log T`` within ``TEMPERATURE_BOUNDS``).
- :func:`apply_temperature`: ``softmax(logits / T)`` along the class axis.
- :func:`temper_probabilities` / :func:`fit_temperature_maps`: the same from probability maps
  (``log p`` are logits up to a per-pixel constant, which the softmax ignores), for callers that
  only keep probabilities (``evaluate``, out-of-fold predictions, ensembles' averaged softmax).
"""

from __future__ import annotations

import numpy as np

#: Equal-width confidence bins of the ECE.
ECE_BINS = 15
#: Pixels kept (deterministic subsample) by the ECE and the temperature fit.
MAX_PIXELS = 200_000
#: Range searched for the temperature.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _subsample(n: int, max_pixels: int, seed: int) -> np.ndarray | slice:
    if n <= max_pixels:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_pixels, replace=False))


def _flat_proba(proba: np.ndarray) -> np.ndarray:
    """``(K, ...)`` -> ``(K, N)``."""
    p = np.asarray(proba)
    return p.reshape(p.shape[0], -1)


def expected_calibration_error(
    proba, labels, n_bins: int = ECE_BINS, max_pixels: int = MAX_PIXELS, seed: int = 0
) -> float:
    """Top-label ECE of ``proba`` (``(K, N)`` or ``(K, H, W)``, class axis first) against integer
    ``labels`` (``(N,)`` or ``(H, W)``). Returns a value in ``[0, 1]`` (0: calibrated)."""
    p = _flat_proba(proba)
    y = np.asarray(labels).reshape(-1)
    if p.shape[1] != y.size:
        raise ValueError(f"{p.shape[1]} probability columns vs {y.size} labels")
    if y.size == 0:
        return 0.0
    keep = _subsample(y.size, max_pixels, seed)
    p, y = p[:, keep].astype(np.float64), y[keep]
    conf = p.max(axis=0)
    correct = (p.argmax(axis=0) == y).astype(np.float64)
    bins = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, conf, n_bins))
    return float(gap.sum() / max(count.sum(), 1))


def softmax(logits, axis: int = 0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def apply_temperature(logits, temperature: float, axis: int = 0) -> np.ndarray:
    """``softmax(logits / temperature)`` along ``axis`` (``0`` for ``(K, H, W)`` maps, ``-1`` for
    ``(N, K)`` rows), as ``float32``."""
    if not temperature > 0:
        raise ValueError(f"temperature {temperature}: must be > 0")
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature), axis=axis).astype(np.float32)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(
    logits, labels, max_pixels: int = MAX_PIXELS, seed: int = 0, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)``.

    ``logits``: ``(N, K)`` (pixels as rows, e.g. ``logits.reshape(K, -1).T`` of a map);
    ``labels``: ``(N,)`` integer classes. ``T > 1`` softens over-confident predictions. Searched
    over ``log T`` (bounded scalar minimisation); returns 1.0 when there are no samples.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if z.ndim != 2 or z.shape[0] != y.size:
        raise ValueError(f"logits {z.shape} and labels {y.shape}: expected (N, K) and (N,)")
    if y.size == 0:
        return 1.0
    keep = _subsample(y.size, max_pixels, seed)
    z, y = z[keep], y[keep]
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(
        lambda t: _nll(z, y, float(np.exp(t))), bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}
    )
    return float(np.exp(res.x))


def temper_probabilities(proba, temperature: float, axis: int = 0) -> np.ndarray:
    """Temperature scaling of probabilities: ``softmax(log(proba) / T)`` along ``axis`` (float32);
    ``T = 1`` returns the probabilities unchanged (up to rounding)."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0))
    return apply_temperature(logp, temperature, axis=axis)


def fit_temperature_maps(probas, labels, max_pixels: int = MAX_PIXELS, seed: int = 0) -> float:
    """:func:`fit_temperature` over several images: ``probas`` ``[(K, H, W)]`` and ``labels``
    ``[(H, W)]`` integer masks (a generator is fine). Each image gives at most
    ``max_pixels / n_images`` pixels (seeded), so memory stays bounded; ``log p`` are the logits."""
    probas, labels = list(probas), list(labels)
    if len(probas) != len(labels):
        raise ValueError(f"{len(probas)} probability maps vs {len(labels)} label maps")
    if not probas:
        return 1.0
    per_image = max(1, max_pixels // len(probas))
    rows, ys = [], []
    for i, (p, y) in enumerate(zip(probas, labels)):
        flat, yy = _flat_proba(p), np.asarray(y).reshape(-1)
        keep = _subsample(yy.size, per_image, seed + i)
        rows.append(np.log(np.clip(flat[:, keep].T.astype(np.float64), 1e-12, 1.0)))
        ys.append(yy[keep])
    return fit_temperature(np.concatenate(rows), np.concatenate(ys), max_pixels=max_pixels, seed=seed)
