"""Finding images and their masks on disk.

A data set is either a folder ``DATA`` with ``images/``, ``masks/`` and an optional
``dataset.json``, or explicit image and mask folders. Masks are paired to images by file
stem: ``x`` pairs with ``x``, ``x_mask``, ``x-mask``, ``x_label``, ``x_labels``, ``x-label``,
``x_seg`` or ``x_gt`` (suffix case-insensitive, extensions may differ). Masks may also sit
next to their images (Kaggle nerve: ``1_1.tif`` + ``1_1_mask.tif``). Hidden files and files
without an image extension are ignored. Every problem found is reported in one ``UserError``.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from biomedseg.core.errors import UserError
from biomedseg.io.images import IMAGE_EXTENSIONS, image_shape, is_image_path
from biomedseg.io.zarr_images import is_zarr

#: the DATA folder's optional metadata file (classes, split, source, licence)
DATA_META = "dataset.json"

MASK_SUFFIXES: tuple[str, ...] = ("_mask", "-mask", "_label", "_labels", "-label", "_seg", "_gt")
MAX_NAMES = 5
#: ``x_mask_1``, ``x_mask-2``, ``x_mask (3)``, ``x_mask1``: a numbered extra mask of ``x``.
_NUMBERED = re.compile(r"^(?P<base>.+?)(?:[ _\-]?\(\d+\)|[ _\-]\d+|(?<=[a-zA-Z])\d+)$")


@dataclass
class Sample:
    """One image, its mask (``None`` when unlabelled) and its id (the image's stem)."""

    id: str
    image: Path
    mask: Path | None


@dataclass
class DataSource:
    """Where a data set lives. ``meta`` is the parsed ``dataset.json`` (or ``None``)."""

    root: Path
    images_dir: Path
    masks_dir: Path | None
    meta: dict | None = None


def natural_key(text: str) -> tuple:
    """Sort key that orders ``"2"`` before ``"10"``."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def mask_base(stem: str) -> str | None:
    """Image stem a mask stem refers to (``"x_mask"`` -> ``"x"``), or None without suffix."""
    lower = stem.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def numbered_mask_base(stem: str) -> str | None:
    """Image stem of a numbered extra mask (``"x_mask_2"`` -> ``"x"``), else None."""
    match = _NUMBERED.match(stem)
    if not match:
        return None
    return mask_base(match.group("base"))


def is_mask_name(stem: str) -> bool:
    """A mask's stem: ``x_mask`` (any of ``MASK_SUFFIXES``) or a numbered one (``x_mask_2``)."""
    return mask_base(stem) is not None or numbered_mask_base(stem) is not None


def name_list(names: list[str], limit: int = MAX_NAMES) -> str:
    """``"a.png, b.png"`` or ``"a.png, ..., e.png and 3 more"``."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _image_files(folder: Path) -> list[Path]:
    """Non-hidden files with an image extension (and ``.zarr`` folders) directly in ``folder``,
    naturally sorted."""
    files = [p for p in folder.iterdir() if is_image_path(p)]
    return sorted(files, key=lambda p: natural_key(p.name))


def _has_mask_files(folder: Path) -> bool:
    return folder.is_dir() and any(is_mask_name(p.stem) for p in _image_files(folder))


def _missing(folder: Path | None) -> str | None:
    if folder is None:
        return None
    if not folder.exists():
        return f"{folder}: folder not found"
    if not folder.is_dir():
        return f"{folder}: not a folder"
    return None


def _match_masks(ids: dict[str, Path], masks: list[Path]) -> tuple[dict, list[Path], list[str]]:
    """Assign masks to image ids: ``({id: mask}, unused masks, ambiguity problems)``."""
    candidates: dict[str, list[Path]] = {}
    unused = []
    for mask in masks:
        base = mask_base(mask.stem)
        key = mask.stem if mask.stem in ids else base if base in ids else None
        if key is None:
            unused.append(mask)
        else:
            candidates.setdefault(key, []).append(mask)
    problems = [
        f"{len(ms)} masks match image {ids[k].name} ({name_list([m.name for m in ms])})"
        for k, ms in candidates.items()
        if len(ms) > 1
    ]
    return {k: ms[0] for k, ms in candidates.items()}, unused, problems


def only_images(
    files: list[Path], images_dir: Path, masks_dir: Path | None, is_mask=is_mask_name
) -> tuple[list[Path], bool]:
    """``(image files, masks share the image folder)``: ``files`` of ``images_dir`` without the
    mask files (``is_mask(stem)``) when the masks sit next to the images. ``UserError`` when no
    image is left."""
    same = masks_dir is not None and masks_dir.resolve() == images_dir.resolve()
    images = [p for p in files if not (same and is_mask(p.stem))]
    if not images:
        kinds = " ".join(sorted(IMAGE_EXTENSIONS))
        raise UserError(f"{images_dir}: no images found (looked for {kinds})")
    return images, same


def find_pairs(
    images_dir: str | os.PathLike, masks_dir: str | os.PathLike | None, allow_unlabelled: bool = False
) -> list[Sample]:
    """Pair every image in ``images_dir`` with its mask in ``masks_dir``.

    ``masks_dir`` may equal ``images_dir`` (masks carry a suffix and are then not images) or
    be ``None`` (unlabelled: every sample has ``mask=None``). Returns samples sorted by id.
    Unpaired images or masks, ambiguous matches, duplicate ids, empty or missing folders are
    all collected into one ``UserError``; with ``allow_unlabelled`` an image without a mask is no
    problem: it is returned with ``mask=None`` (not labelled, as opposed to an empty mask: nothing there).
    """
    images_dir = Path(images_dir)
    masks_dir = Path(masks_dir) if masks_dir is not None else None
    problems = [p for p in (_missing(images_dir), _missing(masks_dir)) if p]
    if problems:
        raise UserError("; ".join(dict.fromkeys(problems)))
    files = _image_files(images_dir)
    images, same = only_images(files, images_dir, masks_dir, mask_base)
    ids: dict[str, Path] = {}
    for path in images:
        if path.stem in ids:
            problems.append(f"{images_dir}: 2 images share the id {path.stem} ({ids[path.stem].name}, {path.name})")
        ids.setdefault(path.stem, path)
    if masks_dir is None:
        if problems:
            raise UserError("; ".join(problems))
        return [Sample(i, p, None) for i, p in sorted(ids.items(), key=lambda t: natural_key(t[0]))]
    masks = [p for p in files if mask_base(p.stem)] if same else _image_files(masks_dir)
    matched, unused, ambiguous = _match_masks(ids, masks)
    problems += [f"{masks_dir}: {a}" for a in ambiguous]
    lonely = [p.name for i, p in ids.items() if i not in matched]
    if not masks:
        problems.append(f"{masks_dir}: no masks found")
    elif lonely and not allow_unlabelled:
        problems.append(
            f"{masks_dir}: {_plural(len(lonely), 'image has', 'images have')} no mask ({name_list(lonely)})"
        )
    if unused:
        problems.append(
            f"{masks_dir}: {_plural(len(unused), 'mask has', 'masks have')} "
            f"no image ({name_list([p.name for p in unused])})"
        )
    if problems:
        raise UserError("; ".join(problems))
    return [Sample(i, ids[i], matched.get(i)) for i in sorted(ids, key=natural_key)]


def read_meta(path: Path) -> tuple[dict | None, str | None]:
    """``(dataset.json as a dict or None, problem text or None)``; an absent file is no problem."""
    if not path.is_file():
        return None, None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path}: cannot read dataset description ({' '.join(str(exc).split())})"
    if not isinstance(meta, dict):
        return None, f"{path}: dataset description must be a JSON object"
    return meta, None


def resolve_folders(
    data: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
) -> tuple[Path, Path, Path | None]:
    """``(root, images_dir, masks_dir or None)``: where a data set's files are.

    ``data``: a folder with ``images/`` and ``masks/`` (or mask files such as ``*_mask`` inside
    ``images/``), or a folder holding the images (and their mask files) directly.
    ``images``/``masks`` override the folders; ``root`` is ``data`` or the image folder's parent.
    ``masks_dir`` is ``None`` when there is neither a mask folder nor mask files. Raises
    ``UserError`` for a missing folder (the DATA, image or a given mask folder).
    """
    root = Path(data) if data is not None else None
    if root is not None and (problem := _missing(root)):
        raise UserError(problem)
    if images is not None:
        images_dir = Path(images)
    elif root is None:
        raise UserError("no data given: pass a DATA folder or --images (and --masks)")
    elif not (root / "images").exists() and any(is_image_path(p) for p in root.iterdir()):
        images_dir = root
    else:
        images_dir = root / "images"
    if problem := _missing(images_dir):
        raise UserError(problem)
    masks_dir: Path | None = None
    if masks is not None:
        masks_dir = Path(masks)
        if problem := _missing(masks_dir):
            raise UserError(problem)
    elif root is not None and (root / "masks").is_dir():
        masks_dir = root / "masks"
    elif _has_mask_files(images_dir):
        masks_dir = images_dir
    return (root if root is not None else images_dir.parent), images_dir, masks_dir


def resolve_data(
    data: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
) -> DataSource:
    """Locate image and mask folders (:func:`resolve_folders`) and read ``dataset.json``.

    Unlike :func:`resolve_folders` a data set without any mask folder or mask files is a
    ``UserError`` naming the missing ``masks`` folder, as is an unreadable ``dataset.json``.
    """
    root, images_dir, masks_dir = resolve_folders(data, images, masks)
    if masks_dir is None and data is not None:
        raise UserError(f"{root / 'masks'}: folder not found (and no *_mask files in {images_dir})")
    if masks_dir is None:
        raise UserError(f"{images_dir}: no masks given; pass --masks (no *_mask files next to the images)")
    meta, problem = read_meta(root / DATA_META) if data is not None else (None, None)
    if problem:
        raise UserError(problem)
    return DataSource(root=root, images_dir=images_dir, masks_dir=masks_dir, meta=meta)


def check_pairs(samples: list[Sample]) -> None:
    """Check every image (and mask) can be opened and sizes agree, from headers only.

    All unreadable files and size mismatches are reported in one ``UserError``.
    """
    problems: list[str] = []
    for sample in samples:
        try:
            ih, iw = image_shape(sample.image)
        except UserError as exc:
            problems.append(str(exc))
            ih = iw = None
        if sample.mask is None:
            continue
        try:
            mh, mw = image_shape(sample.mask)
        except UserError as exc:
            problems.append(str(exc))
            continue
        if ih is not None and (mh, mw) != (ih, iw):
            problems.append(f"{sample.mask}: mask is {mw}x{mh} but its image is {iw}x{ih}")
    if problems:
        more = len(problems) - MAX_NAMES
        text = "; ".join(problems[:MAX_NAMES]) + (f"; and {more} more problems" if more > 0 else "")
        raise UserError(text)


def list_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (their image files, sorted, not recursive) and glob patterns.

    Missing items, non-image files and patterns or folders without images raise
    ``UserError``. Duplicates are dropped; order is kept.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if is_zarr(path):
            files = [path]
        elif path.is_dir():
            files = _image_files(path)
            if not files:
                raise UserError(f"{path}: no images found in this folder")
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UserError(f"{path}: not an image file (expected {', '.join(sorted(IMAGE_EXTENSIONS))})")
            files = [path]
        elif any(c in str(item) for c in "*?["):
            files = sorted(
                (Path(p) for p in glob.glob(str(item)) if is_image_path(p)), key=lambda p: natural_key(str(p))
            )
            if not files:
                raise UserError(f"{item}: pattern matches no image files")
        else:
            raise UserError(f"{path}: no such file or folder")
        found.extend(files)
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique
