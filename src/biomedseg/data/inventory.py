"""Tolerant discovery of images and masks for the data audit.

:func:`biomedseg.data.discovery.find_pairs` raises on the first sign of dirty data (unpaired
files, several masks for one image). The audit must instead *collect* those problems and carry
on, so this module pairs files with the same conventions (it reuses discovery's folder
resolver :func:`~biomedseg.data.discovery.resolve_folders`, ``read_meta`` and its mask names)
and returns everything it found in a :class:`Scan` (used by the audit and by tiling):

- images and their primary mask (``x`` / ``x_mask`` / ``x-mask`` / ``x_label`` ...);
- extra masks of one image: ``x_mask_1``, ``x_mask_2``, ``x_mask (2)``, ``x_mask-3`` (BUSI);
- images without a mask, masks without an image, two images with one id (``x.png``, ``x.tif``).

Only a missing folder or a folder without any image raises ``UserError``; a missing mask folder
is a finding (``Scan.masks_dir is None``), as is an unreadable ``dataset.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from biomedseg.data.discovery import (
    DATA_META,
    is_mask_name,
    mask_base,
    natural_key,
    numbered_mask_base,
    only_images,
    read_meta,
    resolve_folders,
)
from biomedseg.io.images import is_image_path


@dataclass
class ScanItem:
    """One image: ``id`` (its stem), the file, its primary mask and extra mask files."""

    id: str
    image: Path
    mask: Path | None = None
    extra_masks: list[Path] = field(default_factory=list)


@dataclass
class Scan:
    """Everything found on disk, problems included (nothing raised)."""

    root: Path
    images_dir: Path
    masks_dir: Path | None
    meta: dict | None
    items: list[ScanItem]
    unpaired_masks: list[Path] = field(default_factory=list)
    duplicate_ids: list[tuple[str, list[Path]]] = field(default_factory=list)
    meta_problem: str | None = None
    ignored_files: int = 0

    @property
    def unpaired_images(self) -> list[ScanItem]:
        return [it for it in self.items if it.mask is None] if self.masks_dir else []

    @property
    def multi_masks(self) -> list[ScanItem]:
        return [it for it in self.items if it.extra_masks]


def _files(folder: Path) -> tuple[list[Path], int]:
    files, ignored = [], 0
    for p in folder.iterdir():
        if is_image_path(p):
            files.append(p)
        elif p.is_file() and not p.name.startswith("."):
            ignored += 1
    return sorted(files, key=lambda p: natural_key(p.name)), ignored


def _rank(mask: Path, image_id: str) -> tuple:
    """Which of several masks of one image is the primary one: exact stem, then the plain
    suffix (``x_mask``), then numbered ones in natural order."""
    if mask.stem == image_id:
        return (0, ())
    if mask_base(mask.stem) == image_id:
        return (1, ())
    return (2, natural_key(mask.stem))


def scan_data(data=None, images=None, masks=None) -> Scan:
    """Find images, masks and pairing problems without raising on dirty data.

    Raises ``UserError`` only when a given folder is missing or holds no image.
    """
    root, images_dir, masks_dir = resolve_folders(data, images, masks)
    files, ignored = _files(images_dir)
    image_files, same = only_images(files, images_dir, masks_dir, is_mask_name)
    by_id: dict[str, ScanItem] = {}
    dup: dict[str, list[Path]] = {}
    for path in image_files:
        if path.stem in by_id:
            dup.setdefault(path.stem, [by_id[path.stem].image]).append(path)
            continue
        by_id[path.stem] = ScanItem(path.stem, path)
    meta, meta_problem = (None, None)
    if data is not None:
        meta, meta_problem = read_meta(root / DATA_META)
    scan = Scan(
        root=root,
        images_dir=images_dir,
        masks_dir=masks_dir,
        meta=meta,
        items=sorted(by_id.values(), key=lambda it: natural_key(it.id)),
        duplicate_ids=sorted(dup.items(), key=lambda t: natural_key(t[0])),
        meta_problem=meta_problem,
        ignored_files=ignored,
    )
    if masks_dir is None:
        return scan
    if same:
        mask_files = [p for p in files if is_mask_name(p.stem)]
    else:
        mask_files, more = _files(masks_dir)
        scan.ignored_files += more
    candidates: dict[str, list[Path]] = {}
    for mask in mask_files:
        stem = mask.stem
        key = None
        for guess in (stem, mask_base(stem), numbered_mask_base(stem)):
            if guess is not None and guess in by_id:
                key = guess
                break
        if key is None:
            scan.unpaired_masks.append(mask)
        else:
            candidates.setdefault(key, []).append(mask)
    for key, found in candidates.items():
        found = sorted(found, key=lambda m: _rank(m, key))
        item = by_id[key]
        item.mask, item.extra_masks = found[0], found[1:]
    return scan


def relative(path: Path | None, root: Path) -> str | None:
    """``path`` relative to ``root`` when inside it (for reports), else the full path."""
    if path is None:
        return None
    try:
        return os.path.relpath(path, root) if Path(path).is_relative_to(root) else str(path)
    except ValueError:
        return str(path)
