"""Load a trained RUN folder: model, classes, palette, normalisation, config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from biomedseg.errors import UserError
from biomedseg.device import use_channels_last


@dataclass
class LoadedRun:
    """Everything ``predict``/``evaluate`` need, read from the run folder alone."""

    run_dir: Path
    model: object  # torch.nn.Module in eval mode
    config: object  # TrainConfig
    info: dict  # RUN/dataset.json
    normalizer: object  # Normalizer
    device: object  # torch.device
    precision: str

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def background(self) -> int | None:
        return self.info.get("background")

    def predictor(self, tta: bool = False, overlap: float | None = None, batch_size: int | None = None):
        from biomedseg.engine.defaults import inference_batch_size
        from biomedseg.engine.sliding_window import SlidingWindowPredictor

        cfg = self.config
        return SlidingWindowPredictor(self.model, cfg.patch_size, overlap=cfg.overlap if overlap is None else overlap,
                                      batch_size=batch_size or inference_batch_size(cfg.batch_size), device=self.device,
                                      precision=self.precision, tta=tta,
                                      channels_last=use_channels_last(cfg.channels_last, self.device))


def load_run(run_dir, checkpoint: str = "best", device: str = "auto", precision: str | None = None) -> LoadedRun:
    """Rebuild the model of ``run_dir`` and load ``checkpoints/<checkpoint>.pt`` (weights only)."""
    import torch

    from biomedseg.models import create_model
    from biomedseg.training.checkpoint import load_checkpoint
    from biomedseg.training.config import build_config
    from biomedseg.device import configure_threads, resolve_device, resolve_precision
    from biomedseg.transforms.normalize import Normalizer

    run_dir = Path(run_dir)
    for name in ("config.yaml", "dataset.json"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir}: not a biomedseg run folder (no {name})")
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()) or {}, source=str(run_dir / "config.yaml"))
    info = json.loads((run_dir / "dataset.json").read_text())
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not ckpt.is_file() and checkpoint == "best":
        ckpt = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    configure_threads(cfg.num_threads)
    dev = resolve_device(device)
    # the checkpoint holds the weights: never fetch pretrained encoder weights again here
    kwargs = {k: v for k, v in cfg.model_kwargs.items() if k != "pretrained"}
    model = create_model(cfg.model, info["channels"], info["n_classes"], **kwargs)
    model.load_state_dict(state["model"])
    model = model.to(dev).eval()
    if use_channels_last(cfg.channels_last, dev):
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(run_dir, model, cfg, info, Normalizer.from_json(info["normalization"]), dev,
                     resolve_precision(precision or cfg.precision, dev))
