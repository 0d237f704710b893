"""What prediction needs to know about a run, in one small record read once when it is loaded.

:class:`InferenceSettings` is built from a run's ``config.yaml`` (:func:`read_run_config`, the only
place prediction reads the training config) or from an exported file's metadata
(:func:`~biomedseg.inference.exported.format.exported_run`); everything downstream (the predictors,
streaming, export metadata, ``--compile auto``) reads this record, not the training config.

Not in it: the intra-op thread count. That is a choice of each prediction call
(``predict --threads``, default the machine's cores: :class:`~biomedseg.inference.predict.options.PredictOptions`),
never the training config's ``num_threads``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceSettings:
    """How a loaded run predicts."""

    #: side of the tiles the network sees (the training patch, at the working scale)
    patch_size: int
    #: fraction of a tile shared with its neighbour
    overlap: float
    #: tiles per forward pass (already the inference batch, not the training batch)
    batch_size: int
    #: as configured (``auto`` | ``fp32`` | ``bf16`` | ``fp16``); the loaded run holds the resolved one
    precision: str = "auto"
    #: channels-last tensors: ``None`` = the measured default
    #: (:func:`~biomedseg.runtime.device.inference_channels_last`)
    channels_last: bool | None = None
    #: the run's working scale (< 1: tiles shrunk before the network)
    working_scale: float = 1.0
    #: the training data's pixel size ``(y, x)`` in µm, when known
    pixel_size: tuple[float, ...] | None = None
    #: architecture name (recorded in export metadata)
    architecture: str = "unet"

    @property
    def tile_size(self) -> int:
        """Side of the native-resolution tiles a predictor cuts (:func:`~biomedseg.engine.scaled.native_tile`)."""
        from biomedseg.engine.scaled import native_tile

        return native_tile(self.patch_size, self.working_scale)


def read_run_config(values: dict, source: str) -> tuple[InferenceSettings, dict]:
    """``(settings, network keyword arguments)`` of a run's config mapping (``config.yaml``),
    validated and completed with the training defaults once (``training.config.build_config``)."""
    from biomedseg.engine.defaults import inference_batch_size
    from biomedseg.runs.config import build_config

    cfg = build_config(values, source=source)
    settings = InferenceSettings(
        patch_size=cfg.patch_size,
        overlap=cfg.overlap,
        batch_size=inference_batch_size(cfg.batch_size),
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        working_scale=cfg.working_scale,
        pixel_size=tuple(cfg.pixel_size) if cfg.pixel_size else None,
        architecture=cfg.model,
    )
    return settings, dict(cfg.model_kwargs)
