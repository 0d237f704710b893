"""Load a trained RUN folder for prediction: model, classes, palette, normalisation, config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from biomedseg.device import use_channels_last
from biomedseg.runs import DatasetInfo, RunFolder, load_checkpoint, open_run
from biomedseg.training.config import TrainConfig, build_config
from biomedseg.transforms.normalize import Normalizer


@dataclass
class LoadedRun:
    """Everything ``predict``/``evaluate`` need, read from the run folder alone."""

    run: RunFolder
    model: torch.nn.Module  # in eval mode, on ``device``
    config: TrainConfig
    info: DatasetInfo  # RUN/dataset.json
    normalizer: Normalizer
    device: torch.device
    precision: str

    @property
    def run_dir(self) -> Path:
        return self.run.root

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def background(self) -> int | None:
        return self.info.background

    def predictor(self, tta: bool = False, overlap: float | None = None, batch_size: int | None = None,
                  compile: bool | str = False):
        from biomedseg.engine.defaults import inference_batch_size
        from biomedseg.engine.sliding_window import SlidingWindowPredictor

        cfg = self.config
        return SlidingWindowPredictor(self.model, cfg.patch_size, overlap=cfg.overlap if overlap is None else overlap,
                                      batch_size=batch_size or inference_batch_size(cfg.batch_size), device=self.device,
                                      precision=self.precision, tta=tta,
                                      channels_last=use_channels_last(cfg.channels_last, self.device), compile=compile)


def load_run(run_dir, checkpoint: str = "best", device: str = "auto", precision: str | None = None) -> LoadedRun:
    """Rebuild the model of ``run_dir`` and load ``checkpoints/<checkpoint>.pt`` (weights only)."""
    from biomedseg.device import configure_threads, resolve_device, resolve_precision
    from biomedseg.models import create_model

    run = open_run(run_dir)
    cfg = build_config(run.config_values(), source=str(run.paths.config))
    info = run.dataset()
    state = load_checkpoint(run.checkpoint_path(checkpoint))
    configure_threads(cfg.num_threads)
    dev = resolve_device(device)
    # the checkpoint holds the weights: never fetch pretrained encoder weights again here
    kwargs = {k: v for k, v in cfg.model_kwargs.items() if k != "pretrained"}
    model = create_model(cfg.model, info.channels, info.n_classes, **kwargs)
    model.load_state_dict(state["model"])
    model = model.to(dev).eval()
    if use_channels_last(cfg.channels_last, dev):
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(run, model, cfg, info, Normalizer.from_json(info.normalization), dev,
                     resolve_precision(precision or cfg.precision, dev))
