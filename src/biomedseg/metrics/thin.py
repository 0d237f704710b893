"""Thin-structure metrics: the ISBI 2012 foreground-restricted Rand and information scores, clDice.

Rand and information scores (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image
segmentation algorithms for connectomics", the ISBI 2012 EM challenge). Both compare two
*segmentations* -- label images whose segments are, here, the connected components of the
foreground class(es) -- over the pixels that are foreground in the truth only ("foreground
restricted": truth boundary pixels are left out). With ``p_ij`` the joint distribution of
(true segment i, predicted segment j) over those pixels, ``t_i``, ``s_j`` its marginals:

- ``rand = sum p_ij^2 / (0.5 sum t_i^2 + 0.5 sum s_j^2)``, the F-score of the Rand split and merge
  scores as the paper writes it; ``1 - skimage.metrics.adapted_rand_error(true, pred,
  ignore_labels=(0,))[0]`` is the same up to O(1 / segment size), as skimage leaves out the pair
  of each pixel with itself (the tests check the agreement).
- ``vi_score = 2 I(S; T) / (H(S) + H(T))``, the F-score of the information split and merge
  scores ``I/H(S)``, ``I/H(T)``; ``vi`` = ``H(T|S) + H(S|T)``, the variation of information in
  bits (``sum(skimage.metrics.variation_of_information(...))`` with the truth's 0 ignored).

Predicted boundary pixels (label 0) that fall on true foreground form one segment of their own,
as in ``skimage``; the challenge's script instead thinned the predicted boundaries first and took
the best score over several thresholds of a probability map, so these scores are comparable with
the leaderboard's in definition, not in protocol. Empty cases: no true foreground pixel scores 1
(``vi`` 0); a truth made of a single segment that the prediction keeps whole scores 1 too.

clDice (Shit et al. 2021): with skeletons ``S_P``, ``S_T`` (``skimage.morphology.skeletonize``),
``Tprec = |S_P ∩ T| / |S_P|`` and ``Tsens = |S_T ∩ P| / |S_T|``,
``clDice = 2 Tprec Tsens / (Tprec + Tsens)``. Both masks empty: 1; one empty: 0.
"""

from __future__ import annotations

import numpy as np

from biomedseg.metrics.matching import match_objects

__all__ = ["rand_information_scores", "cldice", "THIN_KEYS"]

THIN_KEYS = ("rand", "vi_score", "vi", "cldice")


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def rand_information_scores(true_segments, pred_segments) -> dict[str, float]:
    """``{"rand", "vi_score", "vi"}`` of two label images (``0`` in the truth = boundary, ignored)."""
    t = np.asarray(true_segments)
    p = np.asarray(pred_segments)
    fg = t > 0
    if not fg.any():
        return {"rand": 1.0, "vi_score": 1.0, "vi": 0.0}
    # predicted label 0 is a segment here: shift so match_objects keeps it
    m = match_objects(np.where(fg, t, 0), np.where(fg, p.astype(np.int64) + 1, 0))
    joint = m.intersection / float(fg.sum())
    ti, sj = joint.sum(axis=1), joint.sum(axis=0)
    sum_p2 = float((joint**2).sum())
    rand = sum_p2 / (0.5 * float((ti**2).sum()) + 0.5 * float((sj**2).sum()))
    h_t, h_s, h_ts = _entropy(ti), _entropy(sj), _entropy(joint.ravel())
    mutual = h_t + h_s - h_ts
    vi_score = 2.0 * mutual / (h_t + h_s) if h_t + h_s > 0 else 1.0
    # H(T|S) + H(S|T) = 2 H(T,S) - H(T) - H(S)
    return {"rand": rand, "vi_score": vi_score, "vi": max(2.0 * h_ts - h_t - h_s, 0.0)}


def cldice(pred, target) -> float:
    """clDice of two binary masks (module docstring)."""
    from skimage.morphology import skeletonize

    p = np.asarray(pred, bool)
    t = np.asarray(target, bool)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    sp, st = skeletonize(p), skeletonize(t)
    tprec = float((sp & t).sum()) / max(float(sp.sum()), 1.0)
    tsens = float((st & p).sum()) / max(float(st.sum()), 1.0)
    return 2.0 * tprec * tsens / (tprec + tsens) if tprec + tsens > 0 else 0.0
