"""``biomedseg.train`` and the ``train`` command: :func:`biomedseg.training.api.train`, then
``RUN/trust.json`` (:func:`describe_run`: what the model was trained on, for the out-of-distribution
warnings of ``predict``). Here because ``training/`` (row 9) may not import ``trust/`` (row 11); the
CV folds (``cv``) and sweep trials go through :func:`train` too.

The description reads at most :data:`TRUST_TRAIN_IMAGES` training and :data:`TRUST_VAL_IMAGES`
validation images (evenly spaced over each split) and runs the network once over each; it is
skipped on the non-zero ranks of a DDP run. A failure to describe is a warning: the run is trained
and usable, only without OOD warnings.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError

log = logging.getLogger("biomedseg")

#: training images read for ``trust.json`` at most (an evenly spaced subset beyond)
TRUST_TRAIN_IMAGES = 64
#: validation images read for the thresholds at most
TRUST_VAL_IMAGES = 32


def train(data=None, out=None, **keywords) -> Path:
    """:func:`biomedseg.training.api.train` (same arguments), then :func:`describe_run` on the run."""
    from biomedseg.training.api import train as train_plain

    run_dir = train_plain(data, out, **keywords)
    if int(os.environ.get("RANK", "0")) == 0:
        try:
            describe_run(run_dir, data, keywords.get("images"), keywords.get("masks"))
        except Exception as exc:  # noqa: BLE001 - the trained run stands without its description
            log.warning(
                "%s: trust.json not written (%s: %s); predict gives no OOD warnings", run_dir, type(exc).__name__, exc
            )
            log.debug("describe_run", exc_info=exc)
    return run_dir


def _every(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _split_images(loaded, data, images, masks, split: str, limit: int) -> tuple[list, list]:
    """``(images, pixel sizes)`` of up to ``limit`` samples of ``split`` (none when it is empty)."""
    from biomedseg.data.splits import select_split
    from biomedseg.io import read_image
    from biomedseg.io.pixel_size import pixel_size

    try:
        _, ids, by_id = select_split(loaded, data, images, masks, split)
    except UserError:
        return [], []
    samples = [by_id[i] for i in _every(list(ids), limit)]
    return [read_image(s.image) for s in samples], [pixel_size(s.image) for s in samples]


def describe_run(run_dir, data=None, images=None, masks=None, device: str = "auto") -> Path:
    """Write ``RUN/trust.json`` of a trained run: :func:`biomedseg.trust.ood.build_description` of its
    training split (thresholds from its validation split and held-out training images); ``data``,
    ``images``, ``masks``: what it was trained on (default: the run's recorded data folder)."""
    from biomedseg.inference.run import load_run
    from biomedseg.trust.descriptor import write_description
    from biomedseg.trust.ood import build_description

    started = time.perf_counter()
    loaded = load_run(run_dir, device=device)
    train_images, train_sizes = _split_images(loaded, data, images, masks, "train", TRUST_TRAIN_IMAGES)
    if not train_images:
        raise UserError(f"{run_dir}: no training images to describe")
    val_images, val_sizes = _split_images(loaded, data, images, masks, "val", TRUST_VAL_IMAGES)
    description = build_description(loaded, train_images, train_sizes, val_images, val_sizes)
    path = write_description(run_dir, description)
    log.info(
        "%s: %d training + %d validation images described in %.1f s",
        path,
        len(train_images),
        len(val_images),
        time.perf_counter() - started,
    )
    return path
