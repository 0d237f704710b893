"""What a higher layer adds to each ``predict`` (the ``trust`` rows: ``predictions.csv``, the
``--uncertainty`` maps, out-of-distribution warnings; :mod:`biomedseg.trust.predictions`).

``predict`` (:mod:`.batch`) calls a :class:`PredictHooks` at fixed points of each input; the base
class does what ``predict`` does without them (nothing extra), so the batch loop has no
``if hooks`` branches. ``predict(..., hooks=make)`` takes a factory ``make(loaded_run, options) ->
PredictHooks`` since the run is loaded inside. Order per plain input: :meth:`probabilities` ->
post-processing -> overlay/probabilities/instances -> :meth:`extras` (written before the mask) ->
the mask; per streamed input: :meth:`streamed_decider` wraps the per-band class decision, then
:meth:`streamed` once its mask is complete; after the batch: :meth:`finish`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class PredictHooks:
    """The no-op hooks (see the module docstring)."""

    def probabilities(self, prepared, path: Path, image: np.ndarray, pixel_size) -> np.ndarray:
        """``(K, H, W) float32`` probabilities of one raw image (the predictor's temperature applied)."""
        from biomedseg.inference.predict.core import predict_proba_image

        return predict_proba_image(prepared.run, prepared.predictor, image, pixel_size)

    def extras(self, prepared, path: Path, out: Path, stem: str, image, pixel_size, proba, mask) -> list[Path]:
        """Write extra outputs of one input before its mask; returns their paths."""
        return []

    def streamed_decider(self, prepared, path: Path, out: Path, stem: str, decide):
        """The class decision ``(K, n, W) probabilities -> (n, W) uint8`` of a streamed input's bands
        (``decide``: the post-processing's, ``None`` = argmax); may wrap it to watch the bands."""
        return decide

    def streamed(self, prepared, path: Path, out: Path, stem: str) -> list[Path]:
        """A streamed input is complete; returns extra outputs written."""
        return []

    def finish(self, prepared, files: list[Path], out: Path, summary) -> None:
        """After the batch (``summary``: its :class:`~.batch.PredictSummary`)."""
