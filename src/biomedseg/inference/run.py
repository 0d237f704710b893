"""Load a trained RUN folder for prediction: model, classes, palette, normalisation, settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from biomedseg.inference.settings import InferenceSettings, read_run_config
from biomedseg.runs import DatasetInfo, RunFolder, load_checkpoint, open_run
from biomedseg.runtime.device import inference_channels_last
from biomedseg.transforms.normalize import Normalizer


@dataclass
class LoadedRun:
    """Everything ``predict``/``evaluate`` need, read from the run folder alone."""

    run: RunFolder
    model: torch.nn.Module  # in eval mode, on ``device``
    settings: InferenceSettings  # read once from RUN/config.yaml
    info: DatasetInfo  # RUN/dataset.json
    normalizer: Normalizer
    device: torch.device
    precision: str  # resolved for ``device``

    @property
    def run_dir(self) -> Path:
        return self.run.root

    @property
    def tile_size(self) -> int:
        """Side of the native-resolution tiles the model predicts (the training patch, divided by the
        working scale: :func:`~biomedseg.engine.scaled.native_tile`)."""
        return self.settings.tile_size

    @property
    def channels_last(self) -> bool:
        """Channels-last tensors for this run on its device and precision (the setting, else the
        measured default: :func:`~biomedseg.runtime.device.inference_channels_last`)."""
        return inference_channels_last(self.settings.channels_last, self.device, self.precision)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def background(self) -> int | None:
        return self.info.background

    def postprocess(self):
        """The post-processing chain (``RUN/postprocess.yaml``), or ``None`` when the run has none."""
        from biomedseg.postprocess.ops import load_postprocess

        return load_postprocess(self.run_dir)

    def predictor(
        self,
        tta: bool = False,
        overlap: float | None = None,
        batch_size: int | None = None,
        compile: bool | str = False,
    ):
        from biomedseg.engine.sliding_window import SlidingWindowPredictor

        s = self.settings
        return SlidingWindowPredictor(
            self.model,
            self.tile_size,
            overlap=s.overlap if overlap is None else overlap,
            batch_size=batch_size or s.batch_size,
            device=self.device,
            precision=self.precision,
            tta=tta,
            channels_last=self.channels_last,
            compile=compile,
        )


def load_run(run_dir, checkpoint: str = "best", device: str = "auto", precision: str | None = None) -> LoadedRun:
    """Rebuild the model of ``run_dir`` and load ``checkpoints/<checkpoint>.pt`` (weights only).

    An ensemble or cross-validation folder gives the ensemble of its member runs
    (:func:`load_ensemble`). The thread count is left as it is: ``predict`` sets its own
    (``--threads``), never the training config's."""
    from biomedseg.engine.scaled import at_scale
    from biomedseg.models import create_model
    from biomedseg.runtime.device import resolve_device, resolve_precision

    run = open_run(run_dir)
    if run.info().kind != "run":
        return load_ensemble(run, checkpoint, device, precision)
    settings, model_kwargs = read_run_config(run.config_values(), source=str(run.paths.config))
    info = run.dataset()
    state = load_checkpoint(run.checkpoint_path(checkpoint))
    dev = resolve_device(device)
    precision = resolve_precision(precision or settings.precision, dev)
    # the checkpoint holds the weights: never fetch pretrained encoder weights again here
    kwargs = {k: v for k, v in model_kwargs.items() if k != "pretrained"}
    model = create_model(settings.architecture, info.channels, info.n_classes, **kwargs)
    model.load_state_dict(state["model"])
    model = model.to(dev).eval()
    if inference_channels_last(settings.channels_last, dev, precision):
        model = model.to(memory_format=torch.channels_last)
    model = at_scale(model, settings.working_scale)  # native tiles in, native-size logits out
    return LoadedRun(run, model, settings, info, Normalizer.from_json(info.normalization), dev, precision)


def load_ensemble(
    folder: RunFolder, checkpoint: str = "best", device: str = "auto", precision: str | None = None
) -> LoadedRun:
    """The ensemble of an ensemble or CV folder as a :class:`LoadedRun`.

    Its ``model`` is an :class:`~biomedseg.engine.ensemble_model.EnsembleModel` of the leaf runs
    (weights from :func:`~biomedseg.runs.ensemble.ensemble_members`) taking raw input, so its
    ``normalizer`` is the identity; its settings are the first member's with the largest member tile
    (members trained on smaller tiles predict on larger ones) and smallest batch.
    """
    import dataclasses
    import logging

    from biomedseg.engine.ensemble_model import EnsembleModel
    from biomedseg.runs.ensemble import ensemble_config, ensemble_dataset_info, ensemble_members
    from biomedseg.runtime.device import resolve_device, resolve_precision

    leaves = ensemble_members(folder)
    members = [load_run(leaf.root, checkpoint, device, precision) for leaf, _ in leaves]
    sizes = sorted({m.tile_size for m in members})
    settings, _ = read_run_config(ensemble_config([leaf for leaf, _ in leaves]), source=str(folder.root))
    # members scale their own input (ScaledNet): the ensemble predicts native tiles of the largest member's
    settings = dataclasses.replace(settings, patch_size=sizes[-1], working_scale=1.0)
    if len(sizes) > 1:
        logging.getLogger("biomedseg").warning(
            "%s: members trained on tiles of %s pixels; the ensemble predicts tiles of %d",
            folder.root,
            sizes,
            settings.patch_size,
        )
    info = ensemble_dataset_info([leaf for leaf, _ in leaves])
    dev = resolve_device(device)
    model = (
        EnsembleModel(
            [m.model for m in members], [m.normalizer for m in members], [w for _, w in leaves], info.n_classes
        )
        .to(dev)
        .eval()
    )
    identity = Normalizer(mean=[0.0] * info.channels, std=[1.0] * info.channels)
    return LoadedRun(
        folder, model, settings, info, identity, dev, resolve_precision(precision or settings.precision, dev)
    )
