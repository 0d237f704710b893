"""Deterministic train/validation(/test) splits of sample ids, and the labelled split a trained
run is scored (evaluation) or tuned (post-processing) on."""

from __future__ import annotations

import random
from pathlib import Path

from biomedseg.core.errors import UserError

#: share of images held out for validation (of the training pool in ``train``, of all images in
#: ``biomedseg split``)
DEFAULT_VAL_FRACTION = 0.15
#: share of images held out for testing by ``biomedseg split``
DEFAULT_TEST_FRACTION = 0.2


def count_for_fraction(n: int, fraction: float, name: str) -> int:
    """Images for a side holding ``fraction`` of ``n`` (at least 1 when positive and n >= 2)."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"{name}: must be at least 0 and below 1 (got {fraction})")
    if fraction == 0.0 or n < 2:
        return 0
    return max(1, round(n * fraction))


def side_counts(n: int, val_fraction: float, test_fraction: float = 0.0) -> tuple[int, int]:
    """``(n_val, n_test)`` images of ``n`` for the two fractions (:func:`count_for_fraction`); on a
    tiny data set they shrink (the larger side first) until at least one image is left for training."""
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f"val_fraction + test_fraction must be below 1 (got {val_fraction} + {test_fraction})")
    n_val = count_for_fraction(n, val_fraction, "val_fraction")
    n_test = count_for_fraction(n, test_fraction, "test_fraction")
    while n_val + n_test > max(n - 1, 0):
        if n_test > 0 and (n_test >= n_val or n_val <= 1):
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def make_split(ids: list[str], val_fraction: float, seed: int, test_fraction: float = 0.0) -> dict[str, list[str]]:
    """Split ids into ``{"train": [...], "val": [...]}`` (plus ``"test"`` if requested).

    The sorted, de-duplicated ids are shuffled with ``random.Random(seed)`` (same result on
    every platform and numpy version). A positive fraction gives at least one item when there
    are two or more ids; at least one id always stays in train. Each list is sorted.
    """
    pool = sorted(set(ids))
    n_val, n_test = side_counts(len(pool), val_fraction, test_fraction)
    random.Random(seed).shuffle(pool)
    split = {"train": sorted(pool[n_val + n_test :]), "val": sorted(pool[:n_val])}
    if test_fraction > 0:
        split["test"] = sorted(pool[n_val : n_val + n_test])
    return split


def _split_ids(split: str, run_split: dict, meta: dict | None, all_ids: list[str], data_is_training_data: bool):
    if split == "all":
        return all_ids
    present = set(all_ids)
    if data_is_training_data and run_split.get(split):
        return [i for i in run_split[split] if i in present]
    given = (meta or {}).get("split", {})
    if split in given:
        return [i for i in given[split] if i in present]
    raise UserError(f"--split {split}: the data has no {split!r} split (DATA's dataset.json); use --split all")


def select_split(loaded, data, images, masks, split: str):
    """Labelled samples of ``split`` in the DATA given (or the run's own training data).

    ``loaded``: a loaded run (anything with ``run_dir`` and ``info`` holding ``source`` and ``split``).
    Returns ``(source, ids, by_id)``; the run's own split is used when DATA is the training data.
    """
    from biomedseg.data.discovery import check_pairs, find_pairs, resolve_data

    if data is None and images is None:
        data = loaded.info.source
        if not data or not Path(data).is_dir():
            raise UserError(f"{loaded.run_dir}: the training data folder {data!r} is gone; pass DATA")
    source = resolve_data(data, images, masks)
    samples = find_pairs(source.images_dir, source.masks_dir)
    check_pairs(samples)
    same_data = Path(loaded.info.source or "") == Path(source.root).resolve()
    ids = _split_ids(split, loaded.info.split, source.meta, [s.id for s in samples], same_data)
    if not ids:
        raise UserError(f"{source.root}: the {split!r} split is empty; choose another --split")
    return source, ids, {s.id: s for s in samples}
