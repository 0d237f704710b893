"""Corrections into a DATA folder, retraining on it, and the review order: no Qt here.

:func:`save_correction` writes a corrected mask (and its image, when the DATA folder does not hold
it yet) as ``DATA/masks/<name>.png`` in the run's own encoding
(:func:`~biomedseg.inference.predict.mask_outputs.mask_encoding_for` ``"auto"``: class indices, the
training grey levels or colours); pixels painted with
:data:`~biomedseg.core.labels.IGNORE_INDEX` (255) are unlabelled, which class-index masks hold as
255 (``train`` takes 255 in 0..K-1 index masks as unlabelled). :func:`retrain` is
:func:`biomedseg.training.api.train` with ``init`` (``train --init``); :func:`review_order` ranks
images by the per-image uncertainty score ``predict`` writes to ``predictions.csv``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.core.labels import IGNORE_INDEX


@dataclass(frozen=True)
class SaveOptions:
    """``overwrite``: replace an existing mask (the widget asks first); ``image_source``: the file
    the image layer came from (copied as it is when the DATA folder lacks the image)."""

    overwrite: bool = False
    image_source: Path | None = None


@dataclass(frozen=True)
class RetrainOptions:
    """``fine_tune``: start from the current model's weights (``--init``), else from scratch;
    ``time_budget``: as ``--time-budget`` (``"5m"``); ``settings``: ``--set`` items (``key=value``);
    ``allow_unlabelled``: as ``--allow-unlabelled``."""

    fine_tune: bool = True
    time_budget: str | None = "5m"
    settings: list[str] = field(default_factory=list)
    allow_unlabelled: bool = True  # images without a mask are left out (``--allow-unlabelled``)


def _stem(name: str) -> str:
    stem = Path(str(name)).stem if Path(str(name)).suffix.lower() in (".png", ".tif", ".tiff", ".jpg") else str(name)
    bad = [c for c in stem if c in '/\\:*?"<>|']
    if not stem.strip() or bad:
        raise UserError(f"{name}: not usable as a file name")
    return stem.strip()


def check_labels(labels, n_classes: int, name: str) -> np.ndarray:
    """A Labels layer's data as ``(H, W) uint8`` class indices (255: unlabelled); ``UserError`` for
    an empty layer, a stack, or a value that is no class of the model."""
    if labels is None or 0 in np.shape(labels):
        raise UserError(f"{name}: the layer holds no labels")
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise UserError(f"{name}: labels of shape {arr.shape}; a 2D mask is expected")
    values = np.unique(arr)
    wrong = [int(v) for v in values if not (0 <= v < n_classes or v == IGNORE_INDEX)]
    if wrong:
        raise UserError(
            f"{name}: label value(s) {wrong[:5]} are no class of the model (0..{n_classes - 1}, "
            f"or {IGNORE_INDEX} for unlabelled)"
        )
    return arr.astype(np.uint8)


def _existing_image(images_dir: Path, stem: str) -> Path | None:
    from biomedseg.io.images import is_image_file

    found = [p for p in images_dir.glob(f"{stem}.*") if is_image_file(p)] if images_dir.is_dir() else []
    return found[0] if found else None


def save_correction(state, labels, image: np.ndarray, data_dir, name: str, options: SaveOptions | None = None) -> dict:
    """Write ``labels`` as the mask of image ``name`` into ``data_dir`` (``images/`` + ``masks/``).

    Nothing is written when anything is wrong: a read-only folder, a mask that exists (without
    ``overwrite``), labels of another size than the image, values that are no class. Returns
    ``{"mask": path, "image": path, "image_written": bool, "unlabelled": pixels}``."""
    from biomedseg.inference.predict.mask_outputs import mask_encoding_for
    from biomedseg.io.mask_encoding import write_mask
    from biomedseg.io.writers import check_output_dir, write_png, write_tiff

    opts = options or SaveOptions()
    if data_dir is None or str(data_dir).strip() in ("", "."):
        raise UserError("no DATA folder chosen: pick the folder to save the corrected masks into")
    data_dir, stem = Path(data_dir), _stem(name)
    images_dir, masks_dir = data_dir / "images", data_dir / "masks"
    check_output_dir(images_dir)
    check_output_dir(masks_dir)
    mask = check_labels(labels, len(state.classes), name)
    if image is not None and mask.shape != image.shape[:2]:
        raise UserError(
            f"{name}: labels are {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
        )
    encoding = mask_encoding_for(state.loaded, "auto")
    unlabelled = int((mask == IGNORE_INDEX).sum())
    if unlabelled and encoding.kind != "index":
        raise UserError(
            f"{data_dir}: unlabelled pixels ({IGNORE_INDEX}) can be saved in class-index masks only; this "
            f"run's training masks are {encoding.kind} masks"
        )
    mask_path = masks_dir / f"{stem}.png"
    if mask_path.exists() and not opts.overwrite:
        raise UserError(f"{mask_path}: a mask exists already; confirm to replace it")
    image_path = _existing_image(images_dir, stem)
    written = image_path is None
    if written:
        if image is None:
            raise UserError(f"{name}: no image to save with the mask")
        images_dir.mkdir(parents=True, exist_ok=True)
        src = Path(opts.image_source) if opts.image_source else None
        if src is not None and src.is_file() and src.suffix.lower() in (".png", ".tif", ".tiff"):
            image_path = images_dir / f"{stem}{src.suffix.lower()}"
            shutil.copyfile(src, image_path)
        else:
            pixels = image[:, :, 0] if image.shape[2] == 1 else image
            image_path = images_dir / f"{stem}{'.png' if pixels.dtype in (np.uint8, np.uint16) else '.tif'}"
            (write_png if image_path.suffix == ".png" else write_tiff)(image_path, pixels)
    masks_dir.mkdir(parents=True, exist_ok=True)
    if unlabelled:  # class indices with 255 kept as it is (the encoding knows 0..K-1 only)
        write_png(mask_path, mask)
    else:
        write_mask(mask_path, mask, encoding)
    return {"mask": mask_path, "image": image_path, "image_written": written, "unlabelled": unlabelled}


def retrain(state, data_dir, out, options: RetrainOptions | None = None, on_epoch=None) -> Path:
    """``biomedseg train DATA --out OUT [--init MODEL] --time-budget ... --set ...`` as a call;
    ``on_epoch(epoch, row) -> bool`` as :func:`~biomedseg.training.api.train` takes it."""
    from biomedseg.io.writers import check_output_dir
    from biomedseg.runs.config import parse_overrides
    from biomedseg.training.api import train

    opts = options or RetrainOptions()
    if data_dir is None or str(data_dir).strip() in ("", "."):
        raise UserError("no DATA folder chosen: pick the folder of images and (corrected) masks")
    if out is None or str(out).strip() in ("", "."):
        raise UserError("no output run folder chosen: name the folder the new run goes into")
    check_output_dir(out)
    init = None
    if opts.fine_tune:
        if state is None:
            raise UserError("fine-tuning needs a model: load one in the Model widget (or train from scratch)")
        init = state.run_dir
        if init is None:
            raise UserError(f"{state.source}: --init needs a run folder, not an exported file (a prediction graph)")
    overrides = parse_overrides(opts.settings)
    if opts.time_budget:
        overrides["time_budget"] = opts.time_budget
    if opts.allow_unlabelled:
        overrides["allow_unlabelled"] = True
    return train(Path(data_dir), Path(out), init=init, quiet=True, on_epoch=on_epoch, **overrides)


def review_files(folder) -> list[Path]:
    """The images of a folder (or of its ``images/``), as ``predict`` collects them."""
    from biomedseg.inference.predict.outputs import collect_inputs

    if folder is None or str(folder).strip() in ("", "."):
        raise UserError("no folder chosen: pick a folder of images to review")
    folder = Path(folder)
    if (folder / "images").is_dir():
        folder = folder / "images"
    return collect_inputs([folder])


def review_order(scores: dict) -> list:
    """Keys of ``{key: uncertainty}`` most uncertain first (ties by key, so the order is stable)."""
    return sorted(scores, key=lambda k: (-(scores[k] if scores[k] is not None else -1.0), str(k)))
