"""Near-duplicate images: the same picture up to noise, compression, a small shift or a flip.

Scales to tens of thousands of images without comparing all pairs at full resolution:

1. every image is reduced once to a contrast-stretched 128x128 grey thumbnail (the audit's
   image pass keeps these, 16 KiB each);
2. **descriptor**: the thumbnail box-averaged to 32x32 and blurred (sigma 0.75 grid px), with
   the data set's mean descriptor projected out (the layout every image shares: a fundus disc,
   an ultrasound fan), zero mean and unit norm; a dot product is then the correlation of what
   differs between two coarse pictures, barely changed by a shift of a few pixels, JPEG or noise;
3. **candidates**: a blocked float32 matrix product of all descriptors (6,000 x 1,024 takes
   about a second) keeps, per image, its ``TOP_K`` most similar images above ``CANDIDATE``
   (with ``check_flips`` also against the left-right / up-down / both flipped descriptors);
4. **verification** at 128 px on band-passed thumbnails (difference of Gaussians, sigma 1 and
   ~7.5 px): phase correlation (Hann window) finds the shift (at most ``MAX_SHIFT`` thumbnail
   px, sub-pixel by a parabola fit), then the normalised cross-correlation (NCC) of the aligned
   thumbnails on their overlap must reach the threshold: ``THRESHOLD``, raised for data sets
   whose unrelated images already look alike to ``1 - 0.4 * d5``, where ``d5`` is the 5th
   percentile of ``1 - NCC`` over 300 random pairs (:func:`baseline_distance`);
5. pixel-identical images (same digest of the decoded array) are paired directly, and
   union-find joins verified pairs into groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from biomedseg.data.group_split import connected_groups

#: Descriptor grid side (32x32 = 1024 values).
GRID = 32
#: Cosine similarity of descriptors above which a pair is verified.
CANDIDATE = 0.80
#: NCC of aligned 128 px thumbnails above which a pair is a near duplicate.
THRESHOLD = 0.92
#: Candidates kept per image.
TOP_K = 12
#: Largest shift searched, in thumbnail pixels (128 px thumbnail: ~6% of the image side).
MAX_SHIFT = 8
FLIPS = ("h", "v", "hv")
#: A near duplicate must be this much closer than the 5th percentile of unrelated pairs.
BASELINE_FACTOR = 0.4


@dataclass
class Pair:
    """A verified near-duplicate pair.

    ``ncc``: correlation of the aligned thumbnails (1 = identical); ``shift``: ``(dy, dx)`` in
    thumbnail pixels with ``thumb_i[y, x] ~ flip(thumb_j)[y - dy, x - dx]``; ``flip``: ``""``,
    ``"h"``, ``"v"`` or ``"hv"`` applied to image ``j``; ``exact``: pixel-identical.
    """

    i: int
    j: int
    ncc: float
    shift: tuple[float, float]
    flip: str = ""
    exact: bool = False


def flip_array(arr: np.ndarray, flip: str) -> np.ndarray:
    """Flip the first two axes of ``arr`` (``h``: left-right, ``v``: up-down)."""
    if "h" in flip:
        arr = arr[:, ::-1]
    if "v" in flip:
        arr = arr[::-1]
    return arr


def descriptors(thumbs: np.ndarray) -> np.ndarray:
    """``(N, T, T) uint8`` thumbnails -> ``(N, GRID*GRID) float32`` unit-norm descriptors."""
    n, t, _ = thumbs.shape
    f = t // GRID
    out = np.empty((n, GRID * GRID), np.float32)
    for s in range(0, n, 512):
        block = thumbs[s : s + 512].astype(np.float32).reshape(-1, GRID, f, GRID, f).mean(axis=(2, 4))
        block = ndimage.gaussian_filter(block, sigma=(0, 0.75, 0.75), mode="nearest")
        block = block.reshape(len(block), -1)
        block -= block.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + 512] = block / np.maximum(norm, 1e-6)
    return out


def remove_common(desc: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Project out the mean descriptor of the valid images (the layout they share) and
    re-normalise, so that candidates are ranked by what differs between images (>= 8 images)."""
    idx = np.flatnonzero(valid)
    if idx.size < 8:
        return desc
    mean = desc[idx].mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-6:
        return desc
    mean /= norm
    out = desc - np.outer(desc @ mean, mean).astype(np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
    return out.astype(np.float32)


def _flip_descriptors(desc: np.ndarray, flip: str) -> np.ndarray:
    grid = desc.reshape(-1, GRID, GRID)
    if "h" in flip:
        grid = grid[:, :, ::-1]
    if "v" in flip:
        grid = grid[:, ::-1, :]
    return np.ascontiguousarray(grid.reshape(len(desc), -1))


def candidate_pairs(
    desc: np.ndarray,
    valid: np.ndarray,
    check_flips: bool = False,
    candidate: float = CANDIDATE,
    k: int = TOP_K,
    block: int = 1024,
) -> list[tuple[int, int, str, float]]:
    """Pairs ``(i, j, flip, similarity)`` (``i < j``) worth verifying."""
    n = len(desc)
    idx = np.flatnonzero(valid)
    if idx.size < 2:
        return []
    base = desc[idx]
    found: dict[tuple[int, int, str], float] = {}
    variants = [("", base)] + ([(f, _flip_descriptors(base, f)) for f in FLIPS] if check_flips else [])
    m = len(idx)
    kk = min(k, m - 1)
    for flip, query in variants:
        for s in range(0, m, block):
            sims = query[s : s + block] @ base.T  # (b, m)
            rows = np.arange(s, min(s + block, m))
            sims[np.arange(len(rows)), rows] = -2.0  # never pair an image with itself
            if kk < m - 1:
                top = np.argpartition(-sims, kk, axis=1)[:, :kk]
            else:
                top = np.broadcast_to(np.arange(m), sims.shape)
            for r, row in enumerate(rows):
                cols = top[r]
                vals = sims[r, cols]
                for c, v in zip(cols[vals >= candidate].tolist(), vals[vals >= candidate].tolist()):
                    a, b = int(idx[row]), int(idx[c])
                    key = (min(a, b), max(a, b), flip)
                    if v > found.get(key, -2.0):
                        found[key] = float(v)
    del n
    return [(a, b, f, v) for (a, b, f), v in sorted(found.items())]


def _prepare(thumbs: np.ndarray) -> np.ndarray:
    """Band-passed (difference of Gaussians, sigma 1 and 8 px), z-normalised float32 thumbnails.

    Removing the coarse scale keeps the comparison about the picture's content rather than a
    layout every image shares (a fundus disc, an ultrasound fan, vignetting)."""
    x = ndimage.gaussian_filter(thumbs.astype(np.float32), sigma=(0, 1.0, 1.0), mode="nearest")
    low = x
    for _ in range(3):  # three box filters of width 15 ~ a Gaussian of sigma 7.5, much faster
        low = ndimage.uniform_filter(low, size=(1, 15, 15), mode="nearest")
    x -= low
    x -= x.mean(axis=(1, 2), keepdims=True)
    x /= np.maximum(x.std(axis=(1, 2), keepdims=True), 1e-6)
    return x


def _ncc_at(a: np.ndarray, b: np.ndarray, dy: float, dx: float) -> float:
    """NCC of ``a[y, x]`` and ``b[y - dy, x - dx]`` on their overlap (sub-pixel: linear
    interpolation of ``b``)."""
    t0, t1 = a.shape
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - iy, dx - ix
    if fy or fx:
        b = ndimage.shift(b, (fy, fx), order=1, mode="nearest")
        iy0, ix0 = iy, ix
        margin = 1
    else:
        iy0, ix0 = iy, ix
        margin = 0
    ay0, ay1 = max(iy0, 0) + margin, t0 + min(iy0, 0) - margin
    ax0, ax1 = max(ix0, 0) + margin, t1 + min(ix0, 0) - margin
    if ay1 - ay0 < 4 or ax1 - ax0 < 4:
        return -1.0
    pa = a[ay0:ay1, ax0:ax1]
    pb = b[ay0 - iy0 : ay1 - iy0, ax0 - ix0 : ax1 - ix0]
    pa = pa - pa.mean()
    pb = pb - pb.mean()
    den = float(np.sqrt((pa * pa).sum() * (pb * pb).sum()))
    return float((pa * pb).sum() / den) if den > 0 else -1.0


def phase_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Phase correlation of ``a`` and ``b`` (``(..., h, w)`` float32, Hann-windowed): a surface
    ``(..., h, w)`` whose peak at ``(dy, dx)`` (modulo ``h``, ``w``) means ``a[y, x] ~ b[y - dy, x - dx]``."""
    h, w = a.shape[-2:]
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    cross = sfft.rfft2(a * win, workers=1) * np.conj(sfft.rfft2(b * win, workers=1))
    cross /= np.maximum(np.abs(cross), 1e-9)
    return sfft.irfft2(cross, s=(h, w), workers=1)


def _parabola(m1: float, c: float, p1: float) -> float:
    den = m1 - 2 * c + p1
    return 0.0 if den >= 0 else float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5))


def _score(
    prepared: np.ndarray, pos: dict, pairs, max_shift: int = MAX_SHIFT, chunk: int = 256
) -> list[tuple[float, tuple[float, float]]]:
    """Aligned NCC and shift of each ``(i, j, flip, ...)`` pair of prepared thumbnails."""
    out: list[tuple[float, tuple[float, float]]] = []
    for s in range(0, len(pairs), chunk):
        part = pairs[s : s + chunk]
        a = np.stack([prepared[pos[c[0]]] for c in part])
        b = np.stack([np.ascontiguousarray(flip_array(prepared[pos[c[1]]], c[2])) for c in part])
        corr = np.roll(phase_correlation(a, b), (max_shift, max_shift), axis=(1, 2))
        corr = corr[:, : 2 * max_shift + 1, : 2 * max_shift + 1]
        for r in range(len(part)):
            c = corr[r]
            py, px = np.unravel_index(int(np.argmax(c)), c.shape)
            dy, dx = int(py) - max_shift, int(px) - max_shift
            best, by, bx = -1.0, 0, 0
            for ty, tx in ((dy, dx),) if (dy, dx) == (0, 0) else ((dy, dx), (0, 0)):
                score = _ncc_at(a[r], b[r], ty, tx)
                if score > best:
                    best, by, bx = score, ty, tx
            sy = sx = 0.0
            cy, cx = by + max_shift, bx + max_shift
            if 0 < cy < c.shape[0] - 1:
                sy = _parabola(c[cy - 1, cx], c[cy, cx], c[cy + 1, cx])
            if 0 < cx < c.shape[1] - 1:
                sx = _parabola(c[cy, cx - 1], c[cy, cx], c[cy, cx + 1])
            if sy or sx:
                sub = _ncc_at(a[r], b[r], by + sy, bx + sx)
                if sub > best:
                    best, by, bx = sub, by + sy, bx + sx
                    sy = sx = 0.0
            out.append((best, (by + sy, bx + sx)))
    return out


def baseline_distance(prepared: np.ndarray, n_pairs: int = 300, seed: int = 0) -> float | None:
    """5th percentile of ``1 - NCC`` over random pairs: how alike unrelated images of this data
    set look (small for data sets dominated by a shared layout). None for < 8 images."""
    n = len(prepared)
    if n < 8:
        return None
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=2 * n_pairs)
    j = rng.integers(0, n, size=2 * n_pairs)
    keep = i != j
    pairs = [(int(a), int(b), "") for a, b in zip(i[keep], j[keep])][:n_pairs]
    scores = _score(prepared, {k: k for k in range(n)}, pairs)
    d = np.array([1.0 - s for s, _ in scores])
    return float(np.percentile(d, 5))


def effective_threshold(threshold: float, base: float | None) -> float:
    """NCC a near duplicate needs: ``threshold``, raised to ``1 - 0.4 * base`` when unrelated
    images of the data set are themselves that alike."""
    if base is None:
        return threshold
    return float(max(threshold, 1.0 - BASELINE_FACTOR * base))


def verify_pairs(
    thumbs: np.ndarray, cands, threshold: float = THRESHOLD, valid: np.ndarray | None = None
) -> tuple[list[Pair], dict]:
    """Verify candidate pairs at thumbnail resolution (see the module docstring).

    Returns ``(pairs, info)`` with ``info`` = ``{"baseline_distance", "threshold"}``.
    """
    idx = np.flatnonzero(valid) if valid is not None else np.arange(len(thumbs))
    prepared_all = _prepare(thumbs[idx]) if idx.size else np.zeros((0,) + thumbs.shape[1:], np.float32)
    base = baseline_distance(prepared_all)
    thr = effective_threshold(threshold, base)
    info = {"baseline_distance": None if base is None else round(base, 5), "threshold": round(thr, 5)}
    if not cands:
        return [], info
    pos = {int(v): k for k, v in enumerate(idx)}
    scores = _score(prepared_all, pos, cands)
    out = [Pair(i, j, round(s, 5), shift, flip) for (i, j, flip, _), (s, shift) in zip(cands, scores) if s >= thr]
    return out, info


def exact_pairs(digests: list[str | None]) -> list[Pair]:
    """Pairs of pixel-identical images (each joined to the first of its kind)."""
    first: dict[str, int] = {}
    out = []
    for i, d in enumerate(digests):
        if d is None:
            continue
        if d in first:
            out.append(Pair(first[d], i, 1.0, (0.0, 0.0), "", True))
        else:
            first[d] = i
    return out


def find_pairs(
    thumbs: np.ndarray,
    valid: np.ndarray,
    digests: list[str | None],
    check_flips: bool = False,
    threshold: float = THRESHOLD,
) -> tuple[list[Pair], dict]:
    """All near-duplicate pairs (exact digests plus verified descriptor candidates) and
    ``info`` (``baseline_distance``, effective ``threshold``, ``candidates``)."""
    exact = exact_pairs(digests)
    seen = {(p.i, p.j) for p in exact}
    desc = remove_common(descriptors(thumbs), valid)
    cands = candidate_pairs(desc, valid, check_flips)
    # an exact copy needs no verification; prefer the unflipped match of a pair
    cands = [c for c in cands if (c[0], c[1]) not in seen]
    verified, info = verify_pairs(thumbs, cands, threshold, valid)
    info["candidates"] = len(cands)
    best: dict[tuple[int, int], Pair] = {}
    for p in verified:
        key = (p.i, p.j)
        if (
            key not in best
            or (p.flip == "" and best[key].flip != "")
            or ((p.flip != "") == (best[key].flip != "") and p.ncc > best[key].ncc)
        ):
            best[key] = p
    return exact + [best[k] for k in sorted(best)], info


def group_pairs(n: int, pairs: list[Pair]) -> list[list[int]]:
    """Groups (sorted member lists, >= 2 members) joined by ``pairs``."""
    return [g for g in connected_groups(n, [(p.i, p.j) for p in pairs]) if len(g) > 1]
