"""Deterministic train/validation(/test) splits of sample ids."""

from __future__ import annotations

import random

from biomedseg.errors import UserError


def count_for_fraction(n: int, fraction: float, name: str) -> int:
    """Images for a side holding ``fraction`` of ``n`` (at least 1 when positive and n >= 2)."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"{name}: must be at least 0 and below 1 (got {fraction})")
    if fraction == 0.0 or n < 2:
        return 0
    return max(1, round(n * fraction))


def make_split(ids: list[str], val_fraction: float, seed: int,
               test_fraction: float = 0.0) -> dict[str, list[str]]:
    """Split ids into ``{"train": [...], "val": [...]}`` (plus ``"test"`` if requested).

    The sorted, de-duplicated ids are shuffled with ``random.Random(seed)`` (same result on
    every platform and numpy version). A positive fraction gives at least one item when there
    are two or more ids; at least one id always stays in train. Each list is sorted.
    """
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f"val_fraction + test_fraction must be below 1 "
                        f"(got {val_fraction} + {test_fraction})")
    pool = sorted(set(ids))
    n = len(pool)
    n_val = count_for_fraction(n, val_fraction, "val_fraction")
    n_test = count_for_fraction(n, test_fraction, "test_fraction")
    while n_val + n_test > max(n - 1, 0):  # tiny data set: keep one item for training
        if n_test > 0 and (n_test >= n_val or n_val <= 1):
            n_test -= 1
        else:
            n_val -= 1
    random.Random(seed).shuffle(pool)
    split = {
        "train": sorted(pool[n_val + n_test:]),
        "val": sorted(pool[:n_val]),
    }
    if test_fraction > 0:
        split["test"] = sorted(pool[n_val:n_val + n_test])
    return split
