"""``biomedseg split``: a group-aware split written into ``DATA/dataset.json``.

:func:`write_split` runs the audit (or reuses an ``audit.json``) for the near-duplicate groups,
splits with :func:`biomedseg.data.group_split.split_with_groups` (each group on one side),
writes the split into ``DATA/dataset.json`` (atomically, every other key kept) and the ids of
images whose masks conflict with a near-duplicate copy into ``DATA/exclude.txt``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from biomedseg.audit.run import run_audit
from biomedseg.core.errors import UserError
from biomedseg.data.discovery import DATA_META, natural_key
from biomedseg.data.group_split import EXCLUDE_NAME, split_with_groups
from biomedseg.data.splits import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from biomedseg.io.writers import write_json, write_text

_EXCLUDE_HEADER = (
    "# Image ids left out of training: their masks conflict with a near-duplicate copy\n"
    "# (written by `biomedseg split`; one id per line, '#' starts a comment).\n"
)


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
    return run_audit(data_dir, out=None, check_flips=check_flips, progress=progress)


def stratify_labels(audit: dict) -> dict[str, str]:
    """Per image: its rarest foreground class present (by pooled pixel share), or ``"empty"``."""
    masks = audit.get("masks") or {}
    share = masks.get("class_pixel_fraction") or {}
    out = {}
    for sid, present in (masks.get("image_classes") or {}).items():
        out[sid] = min(present, key=lambda c: (share.get(c, 0.0), c)) if present else "empty"
    return out


def duplicate_groups(
    data_dir, audit=None, check_flips: bool = False, progress: bool = True, stratify: bool = False
) -> tuple[list[set[str]], dict[str, str] | None]:
    """``(near-duplicate groups, stratification labels or None)`` of DATA: from ``audit`` (a dict,
    an ``audit.json`` or its folder) or an audit run now in memory; labels as :func:`stratify_labels`."""
    result = _load_audit(Path(data_dir), audit, check_flips, progress)
    groups = [set(g["members"]) for g in result.get("duplicates", {}).get("groups", [])]
    return groups, (stratify_labels(result) if stratify else None)


def write_split(
    data_dir,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    stratify: bool = False,
    exclude_conflicts: bool = True,
    audit=None,
    check_flips: bool = False,
    progress: bool = True,
) -> dict:
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
    meta_path = data_dir / DATA_META
    meta: dict = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(
                f"{meta_path}: cannot read dataset description "
                f"({' '.join(str(exc).split())}); fix it before writing a split"
            ) from None
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
    how = (
        f"group-aware random split (biomedseg split): near-duplicate groups kept on one side; "
        f"seed {seed}, test {test_fraction}, val {val_fraction}"
        + ("; stratified by the rarest class present" if stratify else "")
        + (f"; {len(excluded)} images with conflicting duplicate masks excluded (exclude.txt)" if excluded else "")
    )
    meta["split"] = split
    meta["split_method"] = how
    meta["split_groups"] = {
        "groups": len(groups),
        "images": sum(len(g) for g in groups),
        "written": datetime.now().isoformat(timespec="seconds"),
    }
    write_json(meta_path, meta)
    exclude_path = data_dir / EXCLUDE_NAME
    if exclude_conflicts or exclude_path.exists():
        write_text(exclude_path, _EXCLUDE_HEADER + "".join(f"{i}\n" for i in excluded))
    return {
        "split": {k: len(v) for k, v in split.items()},
        "groups": len(groups),
        "grouped_images": sum(len(g) for g in groups),
        "excluded": len(excluded),
        "dataset_json": str(meta_path),
        "exclude_txt": str(exclude_path) if exclude_path.exists() else None,
        "split_ids": split,
    }
