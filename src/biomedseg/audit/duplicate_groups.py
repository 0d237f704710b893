"""Near-duplicate section of the data audit: groups, mask agreement and split leakage.

:func:`find_duplicate_groups` searches the thumbnails of the main pass for near duplicates
(:mod:`biomedseg.audit.duplicates`), judges the masks of every verified pair with
:class:`PairJudge` (Dice after aligning the full-resolution masks) and summarises each group:
conflicting masks (Dice < ``CONFLICT_DICE`` or one empty, one not) and leakage (members on
both sides of the ``dataset.json`` split).
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from biomedseg.audit import duplicates as dup
from biomedseg.audit.image_measurements import THUMB
from biomedseg.core.errors import UserError
from biomedseg.data.discovery import natural_key
from biomedseg.data.inventory import Scan, ScanItem
from biomedseg.data.progress import ProgressBar
from biomedseg.io.images import read_image
from biomedseg.io.masks import read_mask
from biomedseg.metrics.pixel import image_dice

#: Mean foreground Dice of two near-duplicate masks below which they conflict.
CONFLICT_DICE = 0.9
#: Most duplicate-pair pictures drawn.
MAX_PAIR_PICTURES = 120
#: Most pairs listed per group in audit.json (worst Dice first).
MAX_PAIRS_PER_GROUP = 50


def split_sides(meta: dict | None) -> dict[str, str]:
    """``{image id: split side}`` from the ``split`` of a dataset.json dict (first side wins)."""
    side = {}
    split = (meta or {}).get("split")
    if isinstance(split, dict):
        for name, ids in split.items():
            if isinstance(ids, list):
                for i in ids:
                    side.setdefault(str(i), str(name))
    return side


def _refine_shift(ga: np.ndarray, gb: np.ndarray, dy: float, dx: float, radius: int) -> tuple[int, int]:
    """Integer full-resolution shift near ``(dy, dx)`` by phase correlation of the images
    (``ga``, ``gb``: ``(H, W)`` float32 grey, same shape)."""
    h, w = ga.shape
    corr = dup.phase_correlation(ga - ga.mean(), gb - gb.mean())
    cy, cx = int(round(dy)), int(round(dx))
    best, by, bx = -np.inf, cy, cx
    for y in range(cy - radius, cy + radius + 1):
        for x in range(cx - radius, cx + radius + 1):
            v = corr[y % h, x % w]
            if v > best:
                best, by, bx = v, y, x
    return by, bx


def _overlap(a: np.ndarray, b: np.ndarray, dy: int, dx: int):
    """``a[y, x]`` and ``b[y - dy, x - dx]`` cut to their overlap (``(None, None)`` if none)."""
    h, w = a.shape[:2]
    y0, y1 = max(dy, 0), h + min(dy, 0)
    x0, x1 = max(dx, 0), w + min(dx, 0)
    if y1 <= y0 or x1 <= x0:
        return None, None
    return a[y0:y1, x0:x1], b[y0 - dy : y1 - dy, x0 - dx : x1 - dx]


def _resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.NEAREST))


def _grey_full(path: Path) -> np.ndarray:
    """``(H, W)`` float32 grey of an image (channel mean)."""
    img = read_image(path).astype(np.float32)
    return img.mean(axis=2) if img.shape[2] == 3 else img[:, :, 0]


class PairJudge:
    """Mask agreement of near-duplicate pairs (full resolution, aligned).

    ``items``: the scanned images; ``bg``: background class index (``None``: class 0 counts
    as background for emptiness); :meth:`mask` (cached): the ``(H, W)`` uint8 class mask of an
    item or ``None``.
    """

    def __init__(self, scan: Scan, res: dict, pal: dict) -> None:
        self.items: list[ScanItem] = scan.items
        self.recs = res["recs"]
        self.mrecs = res["mrecs"]
        self.palette = pal.get("palette")
        self.k = self.palette.n_classes if self.palette is not None else 0
        self.bg = pal.get("background")
        self._shifts: dict[tuple, tuple[int, int]] = {}
        self.mask = lru_cache(maxsize=48)(self._mask)
        self.grey = lru_cache(maxsize=16)(self._grey)

    def _mask(self, i: int) -> np.ndarray | None:
        it = self.items[i]
        if self.palette is None or it.mask is None or self.mrecs[i] is None:
            return None
        try:
            return read_mask(it.mask, self.palette)[0]
        except UserError:
            return None

    def _grey(self, i: int) -> np.ndarray:
        return _grey_full(self.items[i].image)

    def _empty(self, i: int) -> bool | None:
        m = self.mrecs[i]
        if m is None:
            return None
        bgc = 0 if self.bg is None else self.bg
        return int(m.class_counts.sum() - m.class_counts[bgc]) == 0

    def aligned(self, p: dup.Pair):
        """``(mask_a, mask_b in a's frame, shift (dy, dx) full-res)`` or Nones."""
        key = (p.i, p.j, p.flip)
        if key not in self._shifts:
            self._shifts[key] = self._shift(p)
        dy, dx = self._shifts[key]
        ma, mb = self.mask(p.i), self.mask(p.j)
        if ma is None or mb is None:
            return None, None, (dy, dx)
        mb = np.ascontiguousarray(dup.flip_array(mb, p.flip))
        if mb.shape != ma.shape:
            mb = _resize_nearest(mb, ma.shape)
        return ma, mb, (dy, dx)

    def _shift(self, p: dup.Pair) -> tuple[int, int]:
        ra, rb = self.recs[p.i], self.recs[p.j]
        ha, wa = ra.shape
        dy = p.shift[0] * ha / THUMB
        dx = p.shift[1] * wa / THUMB
        same = ra.shape == rb.shape
        if same and (abs(p.shift[0]) > 0.2 or abs(p.shift[1]) > 0.2):
            try:
                gb = np.ascontiguousarray(dup.flip_array(self.grey(p.j), p.flip))
                radius = int(np.ceil(max(ha, wa) / THUMB)) + 1
                dy, dx = _refine_shift(self.grey(p.i), gb, dy, dx, radius)
            except UserError:
                pass
        return int(round(dy)), int(round(dx))

    def judge(self, p: dup.Pair) -> dict:
        """The audit.json row of one pair: ids, distance, shift, Dice, emptiness, conflict."""
        ea, eb = self._empty(p.i), self._empty(p.j)
        out = {
            "a": self.items[p.i].id,
            "b": self.items[p.j].id,
            "distance": round(1.0 - p.ncc, 5),
            "ncc": p.ncc,
            "exact": p.exact,
            "flip": p.flip or None,
            "shift_px": [0, 0],
            "dice": None,
            "empty_a": ea,
            "empty_b": eb,
            "conflict": False,
        }
        if ea is None or eb is None:
            return out
        if ea and eb:
            out["dice"] = 1.0
            return out
        ma, mb, (dy, dx) = self.aligned(p)
        out["shift_px"] = [dy, dx]
        if ma is None:
            return out
        oa, ob = _overlap(ma, mb, dy, dx)
        if oa is None:
            return out
        dice = image_dice(ob, oa, self.k, background=self.bg)
        out["dice"] = round(float(dice), 4)
        out["conflict"] = bool(ea != eb or dice < CONFLICT_DICE)
        return out


def _dice_or_worst(row: dict) -> float:
    """Sort key: Dice, unknown Dice last."""
    return row["dice"] if row["dice"] is not None else 2.0


def _group_summary(ids: list[str], judged: list[tuple], sides: dict[str, str]) -> dict:
    """audit.json entry of one group from its ``(pair, row)`` list (``id`` set later)."""
    rows = [r for _, r in judged]
    dices = [r["dice"] for r in rows if r["dice"] is not None]
    side = sorted({sides[i] for i in ids if i in sides})
    conflict_pairs = [r for r in rows if r["conflict"]]
    conflict_ids = sorted({x for r in conflict_pairs for x in (r["a"], r["b"])}, key=natural_key)
    worst = min(judged, key=lambda t: (_dice_or_worst(t[1]), -t[1]["distance"]))
    return {
        "id": 0,
        "members": ids,
        "size": len(ids),
        "exact": all(r["exact"] for r in rows),
        "max_distance": max(r["distance"] for r in rows),
        "min_dice": min(dices) if dices else None,
        "conflict": bool(conflict_pairs),
        "conflict_ids": conflict_ids,
        "split_sides": side,
        "leak": len(side) > 1,
        "pairs": sorted(rows, key=_dice_or_worst)[:MAX_PAIRS_PER_GROUP],
        "n_pairs": len(rows),
        "_worst": worst[0],
    }


def find_duplicate_groups(scan: Scan, res: dict, pal: dict, check_flips: bool, progress: bool) -> dict:
    """Near-duplicate groups of the scanned images (``res``: :func:`measure_dataset` result).

    Returns ``{"groups": [group dict, conflicts and leaks first], "judge": PairJudge,
    "search_seconds", "n_pairs", **search statistics}``; a group's ``_worst`` is the
    :class:`~biomedseg.audit.duplicates.Pair` with the lowest Dice (internal, not in audit.json).
    """
    recs = res["recs"]
    n = len(scan.items)
    valid = np.array([r is not None and not r.constant for r in recs], bool)
    digests = [r.digest if r is not None else None for r in recs]
    t0 = time.perf_counter()
    pairs, search = dup.find_pairs(res["thumbs"], valid, digests, check_flips=check_flips)
    t_search = time.perf_counter() - t0
    groups = dup.group_pairs(n, pairs)
    judge = PairJudge(scan, res, pal)
    sides = split_sides(scan.meta)
    by_group: dict[int, list] = {}
    member_group = {m: g for g, members in enumerate(groups) for m in members}
    bar = ProgressBar(progress and len(pairs) > 200, len(pairs), "audit: duplicate pairs")
    for p in sorted(pairs, key=lambda p: (p.i, p.j)):
        by_group.setdefault(member_group[p.i], []).append((p, judge.judge(p)))
        bar.update()
    bar.close()
    out_groups = [
        _group_summary([scan.items[m].id for m in members], by_group.get(g, []), sides)
        for g, members in enumerate(groups)
    ]
    out_groups.sort(
        key=lambda g: (
            not g["conflict"],
            not g["leak"],
            g["min_dice"] if g["min_dice"] is not None else 2.0,
            natural_key(g["members"][0]),
        )
    )
    for i, g in enumerate(out_groups, 1):
        g["id"] = i
    return {"groups": out_groups, "judge": judge, "search_seconds": round(t_search, 2), "n_pairs": len(pairs), **search}
