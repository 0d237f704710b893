"""Group-aware train/validation/test splits: near-duplicate images never straddle the split.

:func:`split_with_groups` treats every group of near duplicates (from the audit) as one unit:
units are shuffled with ``random.Random(seed)`` (same result on every platform), placed
largest first, and each goes to test or validation while that side is short of its target
(per stratum when ``stratify`` labels are given), otherwise to train. Targets are counted in
images exactly as :func:`biomedseg.data.splits.make_split` counts them.

:func:`read_exclude` reads ``DATA/exclude.txt`` (images left out of training).
:func:`biomedseg.audit.split.write_split` gets the groups from the audit and writes the split.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np

from biomedseg.data.discovery import natural_key
from biomedseg.data.splits import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, side_counts

EXCLUDE_NAME = "exclude.txt"


def connected_groups(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of ``n`` nodes joined by ``edges`` (SciPy), each a sorted member list,
    ordered by first member; singletons included."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = [a for a, _ in edges]
    cols = [b for _, b in edges]
    graph = coo_matrix((np.ones(len(edges), np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(int(labels[x]), []).append(x)
    return sorted(groups.values(), key=lambda g: g[0])


def group_units(pool: list[str], groups) -> list[list[str]]:
    """Connected groups over ``pool`` (overlapping groups merge); singletons for the rest."""
    index = {i: k for k, i in enumerate(pool)}
    edges = []
    for g in groups:
        members = [index[m] for m in g if m in index]
        edges += [(members[0], m) for m in members[1:]]
    units = [[pool[k] for k in comp] for comp in connected_groups(len(pool), edges)]
    return sorted((sorted(u, key=natural_key) for u in units), key=lambda u: natural_key(u[0]))


def unit_labels(pool: list[str], units: list[list[str]], stratify: dict | None):
    """``(label per id, images per label, label per unit (keyed by its first id))``: a group
    counts under its most common label, ties to the rarer label; no ``stratify``: one label ``""``."""
    lab = {i: str((stratify or {}).get(i, "")) for i in pool}
    label_total = Counter(lab.values())
    labels = {}
    for u in units:
        votes = Counter(lab[i] for i in u)
        labels[u[0]] = sorted(votes, key=lambda t: (-votes[t], label_total[t], t))[0]
    return lab, label_total, labels


def split_with_groups(
    ids,
    groups,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    stratify: dict | None = None,
) -> dict[str, list[str]]:
    """Split ``ids`` into ``{"train", "val"(, "test")}`` keeping each group on one side.

    Args:
        ids: sample ids (duplicates ignored).
        groups: iterables of ids that must stay together (near-duplicate groups); ids not in
            ``ids`` are ignored, overlapping groups merge.
        test_fraction, val_fraction: wanted shares of images (``test`` key only when > 0).
        seed: shuffling seed.
        stratify: optional ``{id: label}`` (e.g. the rarest class present, or "empty"); each
            side then gets about its share of every label (a group counts under the label of
            most of its members).

    Returns:
        Sorted id lists. At least one id stays in train; each positive fraction gets at least
        one id when that is possible without breaking a group.
    """
    pool = sorted({str(i) for i in ids})
    n = len(pool)
    n_val, n_test = side_counts(n, val_fraction, test_fraction)
    targets = {"test": n_test, "val": n_val}
    units = group_units(pool, groups)
    random.Random(seed).shuffle(units)
    units.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
    lab, label_total, labels = unit_labels(pool, units, stratify)
    count = {side: 0 for side in ("train", "val", "test")}
    label_count = {side: Counter() for side in ("val", "test")}
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for u in units:
        size, label = len(u), labels.get(u[0], "")
        best, best_need = "train", 0.0
        for side in ("test", "val"):
            target = targets[side]
            if target == 0 or count[side] + size / 2.0 > target:
                continue
            need = target - count[side]
            if stratify:
                share = target / n
                need = min(need, share * label_total[label] - label_count[side][label])
            if need >= size / 2.0 and need / size > best_need:
                best, best_need = side, need / size
        out[best].extend(u)
        count[best] += size
        if best != "train":
            label_count[best].update(lab[i] for i in u)
    # a requested side left empty (big groups only) takes the smallest unit train can spare
    for side in ("test", "val"):
        if targets[side] and not out[side]:
            in_train = set(out["train"])
            spare = [u for u in units if in_train.issuperset(u) and len(out["train"]) - len(u) >= 1]
            if spare:
                u = set(min(spare, key=len))
                out["train"] = [i for i in out["train"] if i not in u]
                out[side].extend(sorted(u))
    if not out["train"] and pool:  # keep one unit for training
        for side in ("val", "test"):
            if out[side]:
                donor = group_units(out[side], groups)
                u = min(donor, key=len)
                moved = set(u)
                out[side] = [i for i in out[side] if i not in moved]
                out["train"].extend(u)
                break
    result = {"train": sorted(out["train"]), "val": sorted(out["val"])}
    if test_fraction > 0:
        result["test"] = sorted(out["test"])
    return result


def read_exclude(data_dir) -> list[str]:
    """Ids listed in ``DATA/exclude.txt`` (comments and blank lines skipped; [] if absent)."""
    path = Path(data_dir) / EXCLUDE_NAME
    if not path.is_file():
        return []
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line)
    return ids
