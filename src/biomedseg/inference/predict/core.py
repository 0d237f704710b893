"""One image in memory through a loaded run: probabilities and the post-processed mask.

The small core that ``predict``, ``evaluate``, out-of-fold prediction, post-processing tuning and
the export parity check share; files, batches and streaming live in :mod:`.batch`.
"""

from __future__ import annotations

import logging

import numpy as np

from biomedseg.core.labels import class_argmax

log = logging.getLogger("biomedseg")


def predict_proba_image(run, predictor, image: np.ndarray, pixel_size=None) -> np.ndarray:
    """``(H, W, C)`` raw image -> ``(K, H, W) float32`` probabilities. ``pixel_size``: the image's
    ``(y, x)`` µm when known; an image whose pixels differ from the training data's
    (``config.pixel_size``) is predicted on the training grid, its probabilities at its own size."""
    return predictor.to_proba(predict_logits_image(run, predictor, image, pixel_size)).numpy()


def predict_logits_image(run, predictor, image: np.ndarray, pixel_size=None):
    """``(H, W, C)`` raw image -> ``(K', H, W)`` blended logits (CPU tensor; an ensemble's stacked
    member logits), on the training grid as in :func:`predict_proba_image`; ``predictor.to_proba`` of
    them are its probabilities."""
    from biomedseg.engine.scaled import logits_at_pixel_size
    from biomedseg.io import conform_channels
    from biomedseg.io.pixel_size import pixel_size_factor

    x = run.normalizer(conform_channels(image, run.info.channels))
    return logits_at_pixel_size(predictor, x, pixel_size_factor(run.settings.pixel_size, pixel_size))


def predict_image(
    run, predictor, image: np.ndarray, postprocess=None, pixel_size=None
) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, C)`` raw image -> (``(H, W) uint8`` index mask, ``(K, H, W) float32`` probabilities).

    ``postprocess``: a :class:`~biomedseg.postprocess.ops.PostprocessConfig` (``None``: argmax);
    ``pixel_size``: as in :func:`predict_proba_image`.
    """
    proba = predict_proba_image(run, predictor, image, pixel_size)
    if postprocess is None:
        return class_argmax(proba), proba
    from biomedseg.postprocess.ops import apply_postprocess

    mask, _ = apply_postprocess(
        proba,
        postprocess,
        run.classes,
        run.background,
        image_probability=getattr(predictor, "last_image_probability", None),
    )
    return mask, proba


def warn_if_classifier_gate_unusable(post, predictor) -> None:
    """Log once when ``postprocess.yaml`` gates by the classifier head but the model has none."""
    if post is not None and post.gating.uses_classifier and not getattr(predictor, "has_head", False):
        log.warning(
            "postprocess.yaml: gating.min_classifier_probability is set but the model has no classifier "
            "head (train --classifier-head); that criterion is skipped"
        )
