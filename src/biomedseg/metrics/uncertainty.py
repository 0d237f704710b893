"""Uncertainty of a segmentation from its probabilities, per pixel and per image.

numpy/scipy/scikit-image only. Conventions: ``proba`` is ``(K, H, W)`` softmax probabilities;
``samples`` is ``(S, K, H, W)``: the probabilities of ``S`` TTA transforms or ensemble members.

Per pixel:

- :func:`entropy_map`: predictive entropy ``-sum_k p_k log p_k / log K`` in ``[0, 1]``;
- :func:`mutual_information_map`: ``H(mean_s p_s) - mean_s H(p_s)`` (also ``/ log K``): the part
  of the entropy that comes from the samples disagreeing (epistemic);
- :func:`disagreement_map`: fraction of samples whose argmax differs from the mean's argmax.

Per image (``(proba, background) -> float``; higher = less trustworthy), meant to rank images
by how wrong they are rather than by how much foreground they hold:

- :func:`mean_entropy`: the mean of :func:`entropy_map` (grows with the foreground's boundary
  length, so it favours images with many objects);
- :func:`boundary_entropy`: entropy within ``BOUNDARY_BAND`` pixels of the predicted class
  boundaries, divided by the boundary length in pixels (an image with ten equally crisp objects
  scores as one with one object); an image without predicted boundaries scores its mean entropy;
- :func:`expected_dice_loss`: ``1 - E[soft Dice]`` of the predicted mask under the predicted
  distribution: per foreground class ``2 sum(p_c m_c) / (sum p_c + sum m_c)``, averaged over the
  classes predicted or probable (``sum p_c >= 1`` pixel); 0 when none is.

Ranking quality against the true per-image Dice: :func:`spearman` and :func:`risk_coverage`
(area under the risk-coverage curve, and the Dice kept when the most uncertain fraction is sent
to review).
"""

from __future__ import annotations

import math

import numpy as np

#: Half-width in pixels of the band around predicted boundaries scored by :func:`boundary_entropy`.
BOUNDARY_BAND = 2
#: Fractions (percent) of the most uncertain images sent to review in :func:`risk_coverage`.
REVIEW_PERCENTS = (10, 20, 50)
#: The per-image score used where one is needed (``predict``'s CSV, ``evaluate``'s ``uncertainty``
#: column, ``suggest``'s ranking), chosen by ``benchmarks/uncertainty_ranking.py`` (one 5-minute run per
#: shared dataset, temperature fitted on val, test split, ``benchmarks/RESULTS.md`` issue 22):
#: Spearman with per-image Dice <= -0.4 on 4/6 data sets for mean_entropy (mean -0.45), 3/6 for
#: expected_dice_loss (mean -0.39), 1/6 for boundary_entropy (mean -0.19); lower AURC than
#: expected_dice_loss on 5/6. expected_dice_loss was the default before that measurement.
DEFAULT_SCORE = "mean_entropy"
_EPS = 1e-12


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """``-sum(p log p)`` over ``axis``, one class at a time in the input's float precision (float32
    for float32 probabilities: 3-4x faster than a float64 copy reduced over a leading axis, within
    2e-7 of it)."""
    p = np.moveaxis(np.asarray(p), axis, 0)
    out = np.zeros(p.shape[1:], np.float64 if p.dtype == np.float64 else np.float32)
    for k in range(p.shape[0]):
        q = np.clip(p[k], _EPS, 1.0).astype(out.dtype, copy=False)
        out -= q * np.log(q)
    return out


def entropy_map(proba) -> np.ndarray:
    """``(K, H, W)`` -> ``(H, W) float32`` normalised predictive entropy in ``[0, 1]``."""
    p = np.asarray(proba)
    k = p.shape[0]
    if k < 2:
        return np.zeros(p.shape[1:], np.float32)
    return (_entropy(p, 0) / math.log(k)).astype(np.float32)


def mutual_information_map(samples) -> np.ndarray:
    """``(S, K, H, W)`` -> ``(H, W) float32``: entropy of the mean minus mean entropy, ``/ log K``."""
    s = np.asarray(samples, dtype=np.float64)
    k = s.shape[1]
    if k < 2:
        return np.zeros(s.shape[2:], np.float32)
    mi = _entropy(s.mean(axis=0), 0) - _entropy(s, 1).mean(axis=0)
    return np.clip(mi / math.log(k), 0.0, 1.0).astype(np.float32)


def disagreement_map(samples) -> np.ndarray:
    """``(S, K, H, W)`` -> ``(H, W) float32``: fraction of samples voting against the consensus."""
    s = np.asarray(samples)
    consensus = s.mean(axis=0).argmax(axis=0)
    return (s.argmax(axis=1) != consensus[None]).mean(axis=0).astype(np.float32)


def mean_entropy(proba, background: int | None = 0) -> float:
    """Mean normalised entropy of the image (``background`` unused; same signature as the others)."""
    return float(entropy_map(proba).mean())


def predicted_boundaries(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels whose 4-neighbour has another class (both sides of each edge)."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(mask, connectivity=1, mode="inner")


def boundary_entropy(proba, background: int | None = 0, band: int = BOUNDARY_BAND) -> float:
    """Entropy within ``band`` pixels of the predicted boundaries per boundary pixel (see module)."""
    from scipy import ndimage

    p = np.asarray(proba)
    ent = entropy_map(p)
    edges = predicted_boundaries(p.argmax(axis=0))
    length = int(edges.sum())
    if length == 0:
        return float(ent.mean())
    near = ndimage.distance_transform_edt(~edges) <= band
    return float(ent[near].sum() / length)


def expected_dice_loss(proba, background: int | None = 0) -> float:
    """``1 -`` expected soft Dice of the predicted (argmax) mask under ``proba`` (see module)."""
    p = np.asarray(proba, dtype=np.float64)
    pred = p.argmax(axis=0)
    dices = []
    for c in range(p.shape[0]):
        if c == background:
            continue
        m = pred == c
        pc = p[c]
        mass, area = float(pc.sum()), float(m.sum())
        if area == 0 and mass < 1.0:
            continue
        dices.append(2.0 * float(pc[m].sum()) / (mass + area))
    return float(1.0 - np.mean(dices)) if dices else 0.0


#: name -> per-image score function ``(proba (K, H, W), background) -> float``
IMAGE_SCORES = {
    "mean_entropy": mean_entropy,
    "boundary_entropy": boundary_entropy,
    "expected_dice_loss": expected_dice_loss,
}


def image_scores(proba, background: int | None = 0) -> dict[str, float]:
    """Every score of :data:`IMAGE_SCORES` for one image (the columns of a per-image table)."""
    return {name: fn(proba, background) for name, fn in IMAGE_SCORES.items()}


def spearman(scores, dice) -> float:
    """Spearman rank correlation of uncertainty with per-image Dice (negative = useful ranking);
    NaN when either is constant or fewer than 3 images."""
    from scipy.stats import spearmanr

    s, d = np.asarray(scores, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    if s.size < 3 or np.ptp(s) == 0 or np.ptp(d) == 0:
        return float("nan")
    return float(spearmanr(s, d).statistic)


def risk_coverage(scores, dice, percents=REVIEW_PERCENTS) -> dict:
    """How well ``scores`` (higher = less sure) rank images by their ``dice``.

    Images are kept from the most certain on; the risk at coverage ``k/n`` is ``1 - mean Dice`` of
    the ``k`` kept. Returns ``{"aurc": mean risk over k = 1..n (lower is better), "aurc_random":
    1 - mean Dice (the expectation of a random order), "aurc_oracle": the best order's,
    "dice_kept": {p: mean Dice of the images kept when the most uncertain p% (rounded, at least
    one image kept) go to review}, "dice_all": mean Dice}``.
    """
    s, d = np.asarray(scores, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    if s.shape != d.shape or s.size == 0:
        raise ValueError(f"scores {s.shape} and dice {d.shape}: expected two equal non-empty vectors")
    n = s.size

    def aurc(order: np.ndarray) -> float:
        kept = np.cumsum(d[order]) / np.arange(1, n + 1)
        return float(np.mean(1.0 - kept))

    order = np.argsort(s, kind="stable")
    dice_kept = {}
    for pct in percents:
        keep = max(1, n - round(n * pct / 100.0))
        dice_kept[int(pct)] = float(d[order[:keep]].mean())
    return {
        "aurc": aurc(order),
        "aurc_random": float(1.0 - d.mean()),
        "aurc_oracle": aurc(np.argsort(-d, kind="stable")),
        "dice_kept": dice_kept,
        "dice_all": float(d.mean()),
    }


def uncertainty_ranking(scores: dict[str, list[float]], dice: list[float]) -> dict[str, dict]:
    """For each named per-image score: ``{"spearman", **risk_coverage}`` against ``dice`` (one value
    per image, the same order); the block ``evaluate`` reports."""
    return {
        name: {"spearman": spearman(values, dice), **risk_coverage(values, dice)} for name, values in scores.items()
    }
