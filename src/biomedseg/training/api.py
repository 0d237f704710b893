"""``biomedseg.train(...)``: the train command as a Python function.

Writes the RUN folder described in ``docs/architecture.md``::

    RUN/config.yaml   RUN/plan.yaml   RUN/dataset.json   RUN/checkpoints/{best,last}.pt
    RUN/metrics.csv   RUN/curves.png  RUN/tensorboard/
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import yaml

from biomedseg.errors import UserError
from biomedseg.io.writers import write_json, write_text
from biomedseg.training.config import TrainConfig, build_config, load_config_file, merge

log = logging.getLogger("biomedseg")


def resolve_config(config_file=None, overrides: dict | None = None, resume_run: Path | None = None) -> TrainConfig:
    """Defaults < config file < overrides (command line). On resume the run's own config is the base."""
    base = {}
    if resume_run is not None and (resume_run / "config.yaml").is_file():
        base = yaml.safe_load((resume_run / "config.yaml").read_text()) or {}
    return build_config(merge(base, load_config_file(config_file), overrides or {}), source=str(config_file or "options"))


def _plan_applies(key: str, model_name: str, model_kwargs: dict) -> bool:
    """Plan entries for ``model_kwargs.X`` apply only when the chosen architecture takes ``X``.

    The default U-Net takes the planned depth and width; other architectures keep their published
    depth and take only the planned width (narrowed when their published width gets too few
    steps in the budget), and never when pretrained weights fix the width.
    """
    if not key.startswith("model_kwargs."):
        return True
    if model_name == "unet":
        return True
    from biomedseg.models.registry import width_option

    option = width_option(model_name)
    return option is not None and key == f"model_kwargs.{option[0]}" and not model_kwargs.get("pretrained")


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


def train(data=None, out=None, *, images=None, masks=None, config=None, resume: bool = False,
          quiet: bool = False, plan=None, **overrides) -> Path:
    """Train a model on ``data`` (a DATA folder) and write the run folder ``out``.

    ``overrides`` are config fields (see :class:`~biomedseg.training.config.TrainConfig`), e.g.
    ``epochs=20``, ``time_budget="10m"``, ``model="unet"``. ``plan``: a ``plan.yaml`` from
    ``biomedseg plan`` to use instead of planning now. Returns the run folder.
    """
    import torch

    from biomedseg.data.datasets import PatchSampler, class_pixel_counts, load_sample
    from biomedseg.losses import build_loss, class_weights_from_counts
    from biomedseg.models import count_parameters, create_model
    from biomedseg.training.checkpoint import load_checkpoint
    from biomedseg.training.data_setup import auto_iterations_per_epoch, prepare_data
    from biomedseg.device import configure_threads, resolve_device, resolve_precision
    from biomedseg.training.distributed import (gather_objects, init_distributed, parameter_checksum, shutdown,
                                                wrap_model)
    from biomedseg.training.logger import RunLogger
    from biomedseg.training.optim import ProgressSchedule, build_optimizer
    from biomedseg.training.trainer import Trainer, TrainState
    from biomedseg.transforms.basic import build_augmenter
    from biomedseg.transforms.normalize import Normalizer

    if out is None:
        raise UserError("train: --out RUN is required")
    run_dir = Path(out)
    if resume and not (run_dir / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    if not resume and (run_dir / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{run_dir}: already holds a run; use --resume to continue it or choose another --out")
    cfg = resolve_config(config, overrides, run_dir if resume else None)
    explicit = merge(load_config_file(config), overrides or {})  # what the user set: the plan keeps off it
    if cfg.epochs is None and cfg.time_budget is None:
        cfg = cfg.model_copy(update={"epochs": 50})
    threads = configure_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    deterministic = resolve_determinism(cfg.deterministic, device.type)
    seed_everything(cfg.seed, deterministic)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    precision = resolve_precision(cfg.precision, device)
    quiet = quiet or not dist_info.is_main

    setup = prepare_data(cfg, data, images, masks)
    by_id = {s.id: s for s in setup.samples}
    n_classes = len(setup.classes)
    rng = np.random.default_rng(cfg.seed)
    from tqdm.auto import tqdm

    cache, snapped = {}, 0
    wanted = setup.split["train"] + setup.split.get("val", [])
    for sid in tqdm(wanted, desc="loading images", disable=True if (quiet or len(wanted) < 20) else None, leave=False):
        cache[sid], n = load_sample(by_id[sid], setup.palette, setup.channels, setup.strict_index, n_classes, rng)
        snapped += n
    if snapped:
        log.warning("%d mask pixels were off the palette (anti-aliasing/JPEG damage) and were snapped "
                    "to the nearest class", snapped)
    train_samples = [cache[i] for i in setup.split["train"]]
    val_samples = [cache[i] for i in setup.split.get("val", [])]
    if not train_samples:
        raise UserError(f"{setup.source.root}: the training split is empty")

    planned = {}
    if cfg.auto_plan and not resume:
        from biomedseg.training.planner import apply_plan, fingerprint_from_samples, make_plan

        fingerprint = fingerprint_from_samples(train_samples, n_classes, setup.classes, setup.background,
                                               setup.channels)
        if plan is not None:
            from biomedseg.training.planner import load_plan_file

            planned = load_plan_file(plan)
            planned_for = planned.get("model", {}).get("value", "unet")
            if "model" in explicit and explicit["model"] != planned_for:
                # sizes planned for another architecture do not carry over
                planned = {k: v for k, v in planned.items() if not k.startswith("model_kwargs.") and k != "model"}
            else:
                cfg = build_config({**cfg.model_dump(), "model": planned_for}, source="plan")
        else:
            from biomedseg.training.planner import step_timer

            from biomedseg.models.registry import width_option

            option = width_option(cfg.model)
            timer = None  # measuring is only worth it when the width is the plan's to choose
            if (option is not None and option[0] not in (explicit.get("model_kwargs") or {})
                    and not cfg.model_kwargs.get("pretrained")):
                timer = step_timer(setup.channels, n_classes, str(device), model=cfg.model)
            from biomedseg.training.planner import compile_possible

            planned = make_plan(fingerprint, cfg.time_budget, device.type, cfg.epochs, step_time=timer,
                                model=cfg.model, width_option=option, can_compile=compile_possible(explicit))
        planned = {k: v for k, v in planned.items() if _plan_applies(k, cfg.model, cfg.model_kwargs)}
        cfg = build_config(apply_plan(cfg.model_dump(), planned, explicit), source="plan")
        for key in planned:
            top, _, sub = key.partition(".")
            if top in explicit and (not sub or sub in (explicit.get(top) or {})):
                planned[key] = {"value": explicit[top][sub] if sub else explicit[top], "reason": "set by the user"}
        planned["fingerprint"] = fingerprint
    normalizer = Normalizer.fit([s.image for s in train_samples], cfg.normalization, seed=cfg.seed)
    counts = class_pixel_counts(train_samples, n_classes)
    weights = class_weights_from_counts(counts, cfg.class_weights)
    model = create_model(cfg.model, setup.channels, n_classes, **cfg.model_kwargs).to(device)
    from biomedseg.device import use_channels_last

    if use_channels_last(cfg.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, n_classes, weights.to(device) if weights is not None else None).to(device)
    optimizer = build_optimizer(model, cfg)
    schedule = ProgressSchedule(optimizer, cfg.schedule, cfg.lr, cfg.warmup_fraction)
    ipe = auto_iterations_per_epoch(cfg, [s.shape for s in train_samples])
    augmenter = build_augmenter(cfg.augment)

    def make_sampler(epoch: int) -> PatchSampler:
        return PatchSampler(train_samples, cfg.patch_size, n_classes, normalizer, augmenter, cfg.fg_oversample,
                            setup.background, seed=[cfg.seed, epoch, dist_info.rank])

    main = dist_info.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", cfg.to_yaml())
    dataset_info = {
        "classes": setup.classes, "background": setup.background, "palette": setup.palette.to_json(),
        "strict_index": setup.strict_index, "channels": setup.channels, "n_classes": n_classes,
        "normalization": normalizer.to_json(), "split": setup.split,
        "source": str(Path(setup.source.root).resolve()), "class_pixel_counts": counts.tolist(),
        "class_weights": weights.tolist() if weights is not None else None,
    }
    plan = {
        **planned,
        "device": {"value": str(device), "reason": "CUDA when present" if device.type == "cuda" else "no GPU visible"},
        "precision": {"value": precision, "reason": "native bf16/fp16 support" if precision != "fp32"
                      else "no native bf16 on this CPU: emulated bf16 is slower than fp32"},
        "threads": {"value": threads, "reason": "cores available to this process"},
        "deterministic": {"value": deterministic, "reason": "set by the user" if cfg.deterministic is not None
                          else ("CUDA: cuDNN benchmarks its kernels (fastest, not bitwise reproducible)"
                                if device.type == "cuda" else "CPU: the same seed gives the same weights")},
        "channels": {"value": setup.channels, "reason": "colour found in the images" if setup.channels == 3
                     else "all images grey (or grey stored as RGB)"},
        "iterations_per_epoch": {"value": ipe, "reason": "about one pass over the training pixels, in [25, 250]"},
        "parameters": {"value": count_parameters(model), "reason": f"{cfg.model} {cfg.model_kwargs or ''}".strip()},
    }
    if "compile" not in planned:  # planned entries already say "set by the user" where the user did
        plan["compile"] = {"value": cfg.compile, "reason": "set by the user" if "compile" in explicit
                           else "off unless planned: about a minute of compiling first (--set compile=true)"}
    if dist_info.enabled:
        plan["world_size"] = {"value": dist_info.world_size, "reason": "torchrun processes (DDP)"}
    if main:
        write_json(run_dir / "dataset.json", dataset_info)
        write_text(run_dir / "plan.yaml", yaml.safe_dump(plan, sort_keys=False))

    state = TrainState()
    logger = RunLogger(run_dir, resume=resume) if main else None
    if resume:
        ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        state = TrainState(epoch=ck["epoch"], iteration=ck["iteration"], elapsed=ck["elapsed"],
                           best_score=ck["best_score"], best_epoch=ck["best_epoch"])
        torch.set_rng_state(ck["torch_rng"])
        schedule.load_state_dict(ck.get("schedule", {}))
        if logger is not None:
            logger.truncate(state.epoch)
    train_model = wrap_model(model, dist_info, device)
    if cfg.compile:  # after DDP, as PyTorch recommends; checkpoints and validation use the plain module
        train_model = torch.compile(train_model, **({} if cfg.compile is True else {"backend": cfg.compile}))
    trainer = Trainer(cfg, train_model, loss_fn, optimizer, schedule, make_sampler, val_samples, normalizer,
                      n_classes, setup.classes, setup.background, run_dir, device, precision, ipe,
                      dist_info=dist_info, quiet=quiet)
    t0 = time.perf_counter()
    try:
        state = trainer.fit(state, logger)
    finally:
        if logger is not None:
            logger.close()
    if dist_info.enabled:  # record that the ranks ended in sync and who wrote checkpoints
        report = gather_objects({"rank": dist_info.rank, "checksum": parameter_checksum(model),
                                 "checkpoints_written": trainer.checkpoints_written}, dist_info)
        if main:
            write_json(run_dir / "ddp.json", {"world_size": dist_info.world_size, "ranks": report})
        # free the DDP wrapper (its reducer holds the process group) before destroying the group:
        # a gloo group destroyed first hangs in its destructor once the other rank has exited
        trainer.model = train_model = None
        import gc

        gc.collect()
        shutdown(dist_info)
    if not main:
        return run_dir
    from biomedseg.reports.curves import plot_curves

    if (run_dir / "metrics.csv").is_file():
        plot_curves(run_dir / "metrics.csv", run_dir / "curves.png")
    if not quiet:
        log.info("trained %d epochs (%d steps) in %.0fs; best val Dice %.4f at epoch %d; run: %s",
                 state.epoch, state.iteration, time.perf_counter() - t0, state.best_score, state.best_epoch, run_dir)
    return run_dir
