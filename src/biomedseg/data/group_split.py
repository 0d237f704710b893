"""Group-aware train/validation/test splits: near-duplicate images never straddle the split.

:func:`split_with_groups` treats every group of near duplicates (from the audit) as one unit:
units are shuffled with ``random.Random(seed)`` (same result on every platform), placed
largest first, and each goes to test or validation while that side is short of its target
(per stratum when ``stratify`` labels are given), otherwise to train. Targets are counted in
images exactly as :func:`biomedseg.data.splits.make_split` counts them.

:func:`write_split` runs the audit (or reuses an ``audit.json``), writes the split into
``DATA/dataset.json`` (atomically, every other key kept) and the ids of images whose masks
conflict with a near-duplicate copy into ``DATA/exclude.txt``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime
from pathlib import Path

from biomedseg.data.splits import count_for_fraction
from biomedseg.data.discovery import natural_key
from biomedseg.errors import UserError
from biomedseg.io.writers import write_json, write_text

EXCLUDE_NAME = "exclude.txt"
_EXCLUDE_HEADER = ("# Image ids left out of training: their masks conflict with a near-duplicate copy\n"
                   "# (written by `biomedseg split`; one id per line, '#' starts a comment).\n")




def _units(pool: list[str], groups) -> list[list[str]]:
    """Connected groups over ``pool`` (overlapping groups merge); singletons for the rest."""
    from biomedseg.data.duplicates import connected_groups

    index = {i: k for k, i in enumerate(pool)}
    edges = []
    for g in groups:
        members = [index[m] for m in g if m in index]
        edges += [(members[0], m) for m in members[1:]]
    units = [[pool[k] for k in comp] for comp in connected_groups(len(pool), edges)]
    return sorted((sorted(u, key=natural_key) for u in units), key=lambda u: natural_key(u[0]))


def split_with_groups(ids, groups, test_fraction: float = 0.2, val_fraction: float = 0.1,
                      seed: int = 0, stratify: dict | None = None) -> dict[str, list[str]]:
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
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f"val_fraction + test_fraction must be below 1 (got {val_fraction} + {test_fraction})")
    pool = sorted({str(i) for i in ids})
    n = len(pool)
    n_test, n_val = count_for_fraction(n, test_fraction, "test_fraction"), count_for_fraction(n, val_fraction, "val_fraction")
    while n_val + n_test > max(n - 1, 0):  # tiny data set: keep one item for training
        if n_test > 0 and (n_test >= n_val or n_val <= 1):
            n_test -= 1
        else:
            n_val -= 1
    targets = {"test": n_test, "val": n_val}
    units = _units(pool, groups)
    random.Random(seed).shuffle(units)
    units.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
    lab = {i: str((stratify or {}).get(i, "")) for i in pool}
    label_total = Counter(lab.values())
    labels = {}
    for u in units:  # a group counts under its most common label, ties to the rarer label
        votes = Counter(lab[i] for i in u)
        labels[u[0]] = sorted(votes, key=lambda t: (-votes[t], label_total[t], t))[0]
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
            spare = [u for u in units if set(u) <= set(out["train"]) and len(out["train"]) - len(u) >= 1]
            if spare:
                u = min(spare, key=len)
                out["train"] = [i for i in out["train"] if i not in set(u)]
                out[side].extend(u)
    if not out["train"] and pool:  # keep one unit for training
        for side in ("val", "test"):
            if out[side]:
                donor = _units(out[side], groups)
                u = min(donor, key=len)
                out[side] = [i for i in out[side] if i not in set(u)]
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


def _load_audit(data_dir: Path, audit, check_flips: bool, progress: bool) -> dict:
    if isinstance(audit, dict):
        return audit
    if audit is not None:
        path = Path(audit)
        if path.is_dir():
            path = path / "audit.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: cannot read the audit ({' '.join(str(exc).split())})") from None
    from biomedseg.data.audit import run_audit

    return run_audit(data_dir, out=None, check_flips=check_flips, progress=progress, pictures=False)


def stratify_labels(audit: dict) -> dict[str, str]:
    """Per image: its rarest foreground class present (by pooled pixel share), or ``"empty"``."""
    masks = audit.get("masks") or {}
    share = masks.get("class_pixel_fraction") or {}
    out = {}
    for sid, present in (masks.get("image_classes") or {}).items():
        out[sid] = min(present, key=lambda c: (share.get(c, 0.0), c)) if present else "empty"
    return out


def write_split(data_dir, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0,
                stratify: bool = False, exclude_conflicts: bool = True, audit=None,
                check_flips: bool = False, progress: bool = True) -> dict:
    """Write a group-aware split into ``DATA/dataset.json`` and conflicts into ``DATA/exclude.txt``.

    Args:
        data_dir: the DATA folder (``images/``, ``masks/``, optional ``dataset.json``).
        test_fraction, val_fraction, seed: as :func:`split_with_groups`.
        stratify: stratify by the rarest foreground class present in each image ("empty" for
            background-only masks).
        exclude_conflicts: leave out of the split, and list in ``exclude.txt``, every image
            whose mask conflicts with one of its near duplicates (both images of a
            conflicting pair; the other members of the group stay).
        audit: an audit dict, an ``audit.json`` path or its folder; ``None`` runs the audit
            in memory (nothing written).
        check_flips: with ``audit=None``: also group mirrored copies.

    Returns:
        ``{"split": {side: count}, "groups", "grouped_images", "excluded", "dataset_json",
        "exclude_txt", "split_ids"}``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: folder not found")
    meta_path = data_dir / "dataset.json"
    meta: dict = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{meta_path}: cannot read dataset description "
                            f"({' '.join(str(exc).split())}); fix it before writing a split") from None
        if not isinstance(meta, dict):
            raise UserError(f"{meta_path}: dataset description must be a JSON object")
    result = _load_audit(data_dir, audit, check_flips, progress)
    ids = result["inventory"].get("pair_ids") or []
    if not ids:
        raise UserError(f"{data_dir}: no image/mask pairs to split")
    dups = result.get("duplicates", {})
    groups = [set(g["members"]) for g in dups.get("groups", [])]
    excluded = sorted(set(dups.get("conflict_ids", [])) & set(ids), key=natural_key) if exclude_conflicts else []
    pool = [i for i in ids if i not in set(excluded)]
    labels = stratify_labels(result) if stratify else None
    split = split_with_groups(pool, groups, test_fraction, val_fraction, seed, labels)
    how = (f"group-aware random split (biomedseg split): near-duplicate groups kept on one side; "
           f"seed {seed}, test {test_fraction}, val {val_fraction}"
           + ("; stratified by the rarest class present" if stratify else "")
           + (f"; {len(excluded)} images with conflicting duplicate masks excluded (exclude.txt)"
              if excluded else ""))
    meta["split"] = split
    meta["split_method"] = how
    meta["split_groups"] = {"groups": len(groups), "images": sum(len(g) for g in groups),
                            "written": datetime.now().isoformat(timespec="seconds")}
    write_json(meta_path, meta)
    exclude_path = data_dir / EXCLUDE_NAME
    if exclude_conflicts or exclude_path.exists():
        write_text(exclude_path, _EXCLUDE_HEADER + "".join(f"{i}\n" for i in excluded))
    return {"split": {k: len(v) for k, v in split.items()}, "groups": len(groups),
            "grouped_images": sum(len(g) for g in groups), "excluded": len(excluded),
            "dataset_json": str(meta_path), "exclude_txt": str(exclude_path) if exclude_path.exists() else None,
            "split_ids": split}
