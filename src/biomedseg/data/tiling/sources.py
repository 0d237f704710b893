"""Sources of the tiling: image/mask pairs from a DATA folder, one image file or a list."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from biomedseg.core.errors import UserError
from biomedseg.io.images import IMAGE_EXTENSIONS, is_image_path
from biomedseg.io.zarr_images import ZARR_SUFFIX, is_zarr


@dataclass
class Source:
    """One image to tile: its ``id`` (tile names start with it), the file and its mask."""

    id: str
    image: Path
    mask: Path | None


def find_sources(src, masks) -> tuple[list[Source], dict, Path | None]:
    """Image/mask pairs from a DATA folder, one image file (+ mask) or a list of pairs.

    Returns ``(sources, dataset.json dict ({} if none), the DATA folder or None)``; raises
    ``UserError`` for missing files, a DATA folder the audit would flag, or images of which
    only some have masks.
    """
    if isinstance(src, (list, tuple)):
        return _check_sources([_listed_source(item) for item in src]), {}, None
    src = Path(src)
    if src.is_file() or is_zarr(src):
        mask = Path(masks) if masks is not None else _mask_next_to(src)
        return _check_sources([Source(src.stem, src, mask)]), {}, None
    if not src.is_dir():
        raise UserError(f"{src}: no such file or folder")
    from biomedseg.data.inventory import scan_data

    scan = scan_data(src, masks=masks)
    problems = _scan_problems(scan)
    if problems:
        raise UserError(f"{src}: cannot tile: " + "; ".join(problems) + " (run `biomedseg audit` for details)")
    sources = [Source(it.id, it.image, it.mask) for it in scan.items]
    return _check_sources(sources), scan.meta or {}, src


def _listed_source(item) -> Source:
    """A :class:`Source` from an image path or an ``(image, mask)`` pair."""
    if isinstance(item, (list, tuple)):
        img, msk = Path(item[0]), (Path(item[1]) if len(item) > 1 and item[1] is not None else None)
    else:
        img, msk = Path(item), None
    return Source(img.stem, img, msk)


def _scan_problems(scan) -> list[str]:
    """What keeps a scanned DATA folder from being tiled."""
    problems = []
    if scan.meta_problem:
        problems.append(scan.meta_problem)
    if scan.multi_masks:
        it = scan.multi_masks[0]
        problems.append(
            f"{len(scan.multi_masks)} images have several masks (e.g. {it.id}: "
            f"{', '.join(p.name for p in [it.mask] + it.extra_masks)}); merge them first"
        )
    if scan.unpaired_masks:
        problems.append(f"{len(scan.unpaired_masks)} masks have no image (e.g. {scan.unpaired_masks[0].name})")
    if scan.masks_dir is not None and scan.unpaired_images:
        problems.append(f"{len(scan.unpaired_images)} images have no mask (e.g. {scan.unpaired_images[0].image.name})")
    if scan.duplicate_ids:
        problems.append(f"2 images share the id {scan.duplicate_ids[0][0]}")
    return problems


def _mask_next_to(image: Path) -> Path | None:
    """``<stem><mask suffix>.<image extension>`` next to ``image``, if it exists."""
    from biomedseg.data.discovery import MASK_SUFFIXES

    for suffix in MASK_SUFFIXES:
        for ext in sorted(IMAGE_EXTENSIONS) + [ZARR_SUFFIX]:
            for e in (ext, ext.upper()):
                cand = image.with_name(image.stem + suffix + e)
                if is_image_path(cand):
                    return cand
    return None


def _check_sources(sources: list[Source]) -> list[Source]:
    if not sources:
        raise UserError("nothing to tile: no images given")
    seen = set()
    for s in sources:
        if not s.image.exists():
            raise UserError(f"{s.image}: image not found")
        if not is_image_path(s.image):
            raise UserError(f"{s.image}: not an image file")
        if s.mask is not None and not is_image_path(s.mask):
            raise UserError(f"{s.mask}: mask not found")
        if s.id in seen:
            raise UserError(f"{s.image}: two sources share the id {s.id}")
        seen.add(s.id)
    labelled = [s.mask is not None for s in sources]
    if any(labelled) and not all(labelled):
        missing = [s.image.name for s in sources if s.mask is None]
        raise UserError(f"{len(missing)} images have no mask (e.g. {missing[0]}); give masks for all or none")
    return sources
