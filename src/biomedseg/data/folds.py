"""Cross-validation folds over a training pool: near duplicates never straddle two folds.

:func:`make_folds` treats every group of near duplicates (from the audit) as one unit, as
:func:`biomedseg.data.group_split.split_with_groups` does: units are shuffled with
``random.Random(seed)`` (same result on every platform), placed largest first, each into the fold
holding the fewest images (with ``stratify``: the fewest images of the unit's label first, then
the fewest images). :func:`fold_splits` turns folds into the ``{"train", "val"}`` split of each
fold's run. Pure functions: nothing is read or written.
"""

from __future__ import annotations

import random
from collections import Counter

from biomedseg.core.errors import UserError
from biomedseg.data.discovery import natural_key
from biomedseg.data.group_split import group_units, unit_labels

#: folds of ``biomedseg cv`` unless ``--folds`` says otherwise
DEFAULT_FOLDS = 5


def make_folds(ids, groups, k: int, seed: int = 0, stratify: dict | None = None) -> list[list[str]]:
    """Split ``ids`` into ``k`` folds of about equal size, each group of ``groups`` in one fold.

    Args:
        ids: the training pool's sample ids (duplicates ignored; the test split must not be in it).
        groups: iterables of ids that must stay together (near-duplicate groups); ids not in
            ``ids`` are ignored, overlapping groups merge.
        k: number of folds (at least 2, at most the number of units).
        seed: shuffling seed.
        stratify: optional ``{id: label}`` (e.g. the rarest class present, or "empty"): each fold
            then gets about its share of every label (a group counts under the label of most of
            its members).

    Returns:
        ``k`` non-empty lists of ids, each sorted (natural order); together they hold every id once.
    """
    pool = sorted({str(i) for i in ids})
    if k < 2:
        raise UserError(f"--folds {k}: cross-validation needs at least 2 folds")
    units = group_units(pool, groups)
    if len(units) < k:
        raise UserError(f"--folds {k}: the training pool holds only {len(units)} images or near-duplicate groups")
    random.Random(seed).shuffle(units)
    units.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
    _, _, labels = unit_labels(pool, units, stratify)
    count = [0] * k
    label_count = [Counter() for _ in range(k)]
    folds: list[list[str]] = [[] for _ in range(k)]
    for u in units:
        label = labels[u[0]]
        f = min(range(k), key=lambda j: (label_count[j][label] if stratify else 0, count[j], j))
        folds[f].extend(u)
        count[f] += len(u)
        label_count[f][label] += len(u)
    return [sorted(f, key=natural_key) for f in folds]


def fold_splits(folds: list[list[str]]) -> list[dict[str, list[str]]]:
    """``{"train": the other folds, "val": fold i}`` for each fold ``i`` (ids in natural order)."""
    out = []
    for i, val in enumerate(folds):
        train = sorted((x for j, f in enumerate(folds) if j != i for x in f), key=natural_key)
        out.append({"train": train, "val": list(val)})
    return out
