"""Validation during training: whole images by sliding window, scored as one ``metrics.csv`` row."""

from __future__ import annotations

import numpy as np
import torch

from biomedseg.engine.defaults import inference_batch_size
from biomedseg.engine.scaled import at_scale, logits_at_pixel_size, native_tile
from biomedseg.engine.sliding_window import SlidingWindowPredictor
from biomedseg.io.pixel_size import pixel_size_factor
from biomedseg.metrics.pixel import MetricAccumulator
from biomedseg.models.heads import foreground_present


@torch.no_grad()
def validate_images(
    net, cfg, val_samples, normalizer, loss_fn, n_classes, class_names, background, device, precision, channels_last
) -> dict:
    """Scores of ``net`` on the cached validation images: a ``MetricAccumulator.summary()`` plus
    ``loss`` (mean over images) and, for a model with an image-level head, ``cls_acc``.

    The images stay at their native resolution: at a working scale below 1 the network sees them
    shrunk and its logits come back to the native size (:class:`~biomedseg.engine.scaled.ScaledNet`),
    so the scores are those ``evaluate`` would give."""
    predictor = SlidingWindowPredictor(
        at_scale(net, cfg.working_scale),
        native_tile(cfg.patch_size, cfg.working_scale),
        overlap=cfg.overlap,
        batch_size=inference_batch_size(cfg.batch_size),
        device=device,
        precision=precision,
        channels_last=channels_last,
    )
    acc = MetricAccumulator(n_classes, class_names, background)
    losses, cls_right = [], []
    for s in val_samples:
        logits = logits_at_pixel_size(predictor, normalizer(s.image), pixel_size_factor(cfg.pixel_size, s.pixel_size))
        target = torch.from_numpy(s.mask.astype(np.int64))
        losses.append(float(loss_fn(logits[None], target[None])))
        acc.update(logits.argmax(0).numpy().astype(np.uint8), s.mask, image_id=s.id)
        if predictor.last_image_probability is not None:
            truth = bool(foreground_present(target[None], background)[0])
            cls_right.append((predictor.last_image_probability >= 0.5) == truth)
    summary = acc.summary()
    summary["loss"] = float(np.mean(losses)) if losses else float("nan")
    if cls_right:
        summary["cls_acc"] = float(np.mean(cls_right))
    return summary


def val_columns(summary: dict, class_names: list[str], background: int | None) -> dict:
    """The ``val_*`` columns of an epoch row from a :func:`validate_images` summary; ``val_fp`` and
    ``val_fn`` count the pixels of all foreground classes."""
    fg = [n for i, n in enumerate(class_names) if i != background]
    cols = {
        "val_loss": summary["loss"],
        "val_dice": summary["dice"],
        "val_iou": summary["iou"],
        "val_precision": summary["precision"],
        "val_recall": summary["recall"],
        "val_f1": summary["f1"],
        "val_fp": float(sum(summary["per_class"][n]["fp"] for n in fg)),
        "val_fn": float(sum(summary["per_class"][n]["fn"] for n in fg)),
    }
    for name, d in summary["per_class"].items():
        cols[f"val_dice_{name}"] = d["dice"]
    if "cls_acc" in summary:
        cols["val_cls_acc"] = summary["cls_acc"]
    return cols
