"""The stages of ``train`` after the data and the plan: runtime, build, artifacts, fit, finish.

Each stage is a short function with plain inputs and outputs; :func:`biomedseg.training.api.train`
calls them in order::

    settings -> runtime -> load data -> plan -> build -> write_artifacts -> fit -> finish
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.runs import DatasetInfo, RunFolder, RunInfo, load_checkpoint
from biomedseg.runs.config import TrainConfig

log = logging.getLogger("biomedseg")


@dataclass
class Runtime:
    """Where and how training runs: device, precision, threads, determinism, DDP rank."""

    device: object  # torch.device
    precision: str
    threads: int
    deterministic: bool
    dist: object  # training.distributed.DistInfo
    quiet: bool


@dataclass
class Parts:
    """What the build stage makes from the config and the data."""

    normalizer: object
    counts: np.ndarray
    weights: object  # torch.Tensor | None
    model: object  # torch.nn.Module (plain: no DDP/compile wrapper)
    loss_fn: object
    optimizer: object
    schedule: object
    iterations_per_epoch: int
    augmenter: object
    notes: dict = field(default_factory=dict)  # plan.yaml entries decided while building (--init)


def resolve_determinism(deterministic: bool | None, device_type: str) -> bool:
    """``deterministic: null`` means bitwise-reproducible runs on CPU, fastest kernels on CUDA."""
    return deterministic if deterministic is not None else device_type != "cuda"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; ``deterministic=False`` lets cuDNN benchmark its kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def start_runtime(cfg: TrainConfig, quiet: bool = False) -> Runtime:
    """Threads, device, seeds and the DDP process group (under ``torchrun``)."""
    import torch

    from biomedseg.runtime.device import configure_threads, resolve_device, resolve_precision
    from biomedseg.training.distributed import init_distributed

    threads = configure_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    deterministic = resolve_determinism(cfg.deterministic, device.type)
    seed_everything(cfg.seed, deterministic)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    return Runtime(
        device, resolve_precision(cfg.precision, device), threads, deterministic, dist, quiet or not dist.is_main
    )


def build(cfg: TrainConfig, data, rt: Runtime, init=None) -> Parts:
    """Normaliser, class weights, model, loss, optimiser and schedule for ``cfg`` on ``data``; ``init``: an
    :class:`~biomedseg.training.warm_start.InitSource` whose weights (and normalisation, where the new
    images match it) the model starts from."""
    import torch

    from biomedseg.data.datasets import class_pixel_counts
    from biomedseg.losses.build import build_loss, class_weights_from_counts
    from biomedseg.models import create_model
    from biomedseg.runtime.device import use_channels_last
    from biomedseg.training.data_setup import auto_iterations_per_epoch
    from biomedseg.training.optim import ProgressSchedule, build_optimizer
    from biomedseg.transforms.basic import build_augmenter
    from biomedseg.transforms.normalize import Normalizer

    normalizer = Normalizer.fit([s.image for s in data.train], cfg.normalization, seed=cfg.seed)
    counts = class_pixel_counts(data.train, data.n_classes)
    weights = class_weights_from_counts(counts, cfg.class_weights)
    model = create_model(cfg.model, data.setup.channels, data.n_classes, **cfg.model_kwargs)
    notes = {}
    if init is not None:
        from biomedseg.training.warm_start import choose_normalizer, load_init_weights

        normalizer, why = choose_normalizer(init, normalizer, data.setup.channels)
        notes["init_normalization"] = {"value": "source" if "re-estimated" not in why else "new images", "reason": why}
        notes["init_classes"] = load_init_weights(model, init, cfg, data.setup.classes, data.setup.channels)
    model = model.to(rt.device)
    if use_channels_last(cfg.channels_last, rt.device):
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, data.n_classes, weights.to(rt.device) if weights is not None else None)
    optimizer = build_optimizer(model, cfg)
    schedule = ProgressSchedule(optimizer, cfg.schedule, cfg.lr, cfg.warmup_fraction)
    ipe = auto_iterations_per_epoch(cfg, [s.shape for s in data.train])
    return Parts(
        normalizer,
        counts,
        weights,
        model,
        loss_fn.to(rt.device),
        optimizer,
        schedule,
        ipe,
        build_augmenter(cfg.augment),
        notes,
    )


def dataset_info(data, parts: Parts) -> DatasetInfo:
    """``RUN/dataset.json``: what prediction needs to know about the training data."""
    s = data.setup
    return DatasetInfo(
        classes=s.classes,
        background=s.background,
        palette=s.palette.to_json(),
        strict_index=s.strict_index,
        channels=s.channels,
        n_classes=data.n_classes,
        normalization=parts.normalizer.to_json(),
        split=s.split,
        source=str(Path(s.source.root).resolve()),
        class_pixel_counts=parts.counts.tolist(),
        class_weights=parts.weights.tolist() if parts.weights is not None else None,
    )


def runtime_entries(cfg: TrainConfig, rt: Runtime, data, parts: Parts, planned: dict, explicit: dict) -> dict:
    """``plan.yaml``: the planned entries plus the choices made at run time, each with its reason."""
    from biomedseg.models import count_parameters
    from biomedseg.planning.stage import USER_REASON

    cuda = rt.device.type == "cuda"
    entries = {
        **planned,
        **parts.notes,
        "device": {"value": str(rt.device), "reason": "CUDA when present" if cuda else "no GPU visible"},
        "precision": {
            "value": rt.precision,
            "reason": "native bf16/fp16 support"
            if rt.precision != "fp32"
            else "no native bf16 on this CPU: emulated bf16 is slower than fp32",
        },
        "threads": {"value": rt.threads, "reason": "cores available to this process"},
        "deterministic": {
            "value": rt.deterministic,
            "reason": USER_REASON
            if cfg.deterministic is not None
            else (
                "CUDA: cuDNN benchmarks its kernels (fastest, not bitwise reproducible)"
                if cuda
                else "CPU: the same seed gives the same weights"
            ),
        },
        "channels": {
            "value": data.setup.channels,
            "reason": "colour found in the images"
            if data.setup.channels == 3
            else "all images grey (or grey stored as RGB)",
        },
        "iterations_per_epoch": {
            "value": parts.iterations_per_epoch,
            "reason": "about one pass over the training pixels, in [25, 250]",
        },
        "parameters": {
            "value": count_parameters(parts.model),
            "reason": f"{cfg.model} {cfg.model_kwargs or ''}".strip(),
        },
    }
    if "compile" not in planned:  # planned entries already say "set by the user" where the user did
        entries["compile"] = {
            "value": cfg.compile,
            "reason": USER_REASON
            if "compile" in explicit
            else "off unless planned: about a minute of compiling first (--set compile=true)",
        }
    if data.setup.ignore_reason:
        ignore = data.setup.palette.ignore
        entries["ignore_value"] = {
            "value": None if ignore is None else (ignore[0] if len(set(ignore)) == 1 else list(ignore)),
            "reason": data.setup.ignore_reason,
        }
    if rt.dist.enabled:
        entries["world_size"] = {"value": rt.dist.world_size, "reason": "torchrun processes (DDP)"}
    return entries


def write_artifacts(
    run: RunFolder, cfg: TrainConfig, info: DatasetInfo, plan: dict, resume: bool, parent: dict | None = None
) -> None:
    """``run.json`` (kept on resume; ``parent``: the ``--init`` lineage), ``config.yaml``, ``dataset.json``
    and ``plan.yaml``."""
    run.root.mkdir(parents=True, exist_ok=True)
    if not (resume and run.paths.run_json.is_file()):
        run.write_info(RunInfo.new("run", parent=parent))
    run.write_config(cfg.to_yaml())
    run.write_dataset(info)
    run.write_plan(plan)


def make_trainer(run: RunFolder, cfg: TrainConfig, data, parts: Parts, rt: Runtime, on_epoch=None):
    """The :class:`~biomedseg.training.trainer.Trainer`, its model wrapped for DDP and compiled as configured
    (``on_epoch``: the Trainer's per-epoch callback)."""
    import torch

    from biomedseg.data.datasets import PatchSampler
    from biomedseg.training.distributed import wrap_model
    from biomedseg.training.loader import BatchSource
    from biomedseg.training.trainer import Trainer

    sampler = PatchSampler(
        data.train,
        cfg.patch_size,
        data.n_classes,
        parts.normalizer,
        parts.augmenter,
        cfg.fg_oversample,
        data.setup.background,
    )
    batches = BatchSource(sampler, cfg.batch_size, seed=[cfg.seed, rt.dist.rank])  # one generator per batch

    train_model = wrap_model(parts.model, rt.dist, rt.device)
    if cfg.compile:  # after DDP, as PyTorch recommends; checkpoints and validation use the plain module
        train_model = torch.compile(train_model, **({} if cfg.compile is True else {"backend": cfg.compile}))
    s = data.setup
    return Trainer(
        cfg,
        train_model,
        parts.loss_fn,
        parts.optimizer,
        parts.schedule,
        batches,
        data.val,
        parts.normalizer,
        data.n_classes,
        s.classes,
        s.background,
        run.root,
        rt.device,
        rt.precision,
        parts.iterations_per_epoch,
        dist_info=rt.dist,
        quiet=rt.quiet,
        on_epoch=on_epoch,
    )


def fit(run: RunFolder, trainer, rt: Runtime, resume: bool):
    """Run the training loop (continuing ``last.pt`` when resuming); returns the final TrainState."""
    from biomedseg.training.logger import RunLogger
    from biomedseg.training.trainer import TrainState

    logger = RunLogger(run.paths.metrics, run.paths.tensorboard, resume=resume) if rt.dist.is_main else None
    state = TrainState()
    if resume:
        state = trainer.restore(load_checkpoint(run.paths.checkpoint("last")))
        if logger is not None:
            logger.truncate(state.epoch)
    try:
        return trainer.fit(state, logger)
    finally:
        if logger is not None:
            logger.close()


def finish_distributed(run: RunFolder, trainer, rt: Runtime) -> None:
    """Record that the ranks ended in sync (and who wrote checkpoints), then leave the process group."""
    import gc

    from biomedseg.training.distributed import gather_objects, parameter_checksum, shutdown

    report = gather_objects(
        {
            "rank": rt.dist.rank,
            "checksum": parameter_checksum(trainer.net),
            "checkpoints_written": trainer.checkpoints_written,
        },
        rt.dist,
    )
    if rt.dist.is_main:
        run.write_ddp_report({"world_size": rt.dist.world_size, "ranks": report})
    # free the DDP wrapper (its reducer holds the process group) before destroying the group:
    # a gloo group destroyed first hangs in its destructor once the other rank has exited
    trainer.model = None
    gc.collect()
    shutdown(rt.dist)


def finish(run: RunFolder, state, rt: Runtime, started: float) -> None:
    """Training curves (``curves.png``) and a one-line summary."""
    from biomedseg.training.curves import plot_curves

    if run.paths.metrics.is_file():
        plot_curves(run.paths.metrics, run.paths.curves)
    if not rt.quiet:
        log.info(
            "trained %d epochs (%d steps) in %.0fs; best val Dice %.4f at epoch %d; run: %s",
            state.epoch,
            state.iteration,
            time.perf_counter() - started,
            state.best_score,
            state.best_epoch,
            run.root,
        )
