"""``biomedseg.train(...)`` and ``biomedseg plan``: the commands as Python functions.

``train`` runs its stages in order (each in :mod:`biomedseg.training.stages`,
:mod:`~biomedseg.training.data_setup` and :mod:`~biomedseg.planning.stage`)::

    settings -> runtime -> load data -> plan -> build -> write artifacts -> fit -> finish

and writes the run folder of :mod:`biomedseg.runs`. ``plan_data`` runs the first stages (settings,
load data, plan) and writes the plan alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from biomedseg.core.errors import UserError
from biomedseg.io.writers import write_text
from biomedseg.planning.stage import fingerprint_of, plan_config, plan_now, training_pixel_size
from biomedseg.runs import RunFolder, create_run
from biomedseg.runs.config import DEFAULT_EPOCHS, TrainConfig, build_config, load_config_file, merge
from biomedseg.training import stages
from biomedseg.training.data_setup import at_working_scale, load_training_data
from biomedseg.training.warm_start import init_settings, resolve_init


def resolve_config(config_file=None, overrides: dict | None = None, resume_run: RunFolder | None = None) -> TrainConfig:
    """Defaults < config file < overrides (command line). On resume the run's own config is the base."""
    base = resume_run.config_values() if resume_run is not None and resume_run.paths.config.is_file() else {}
    return build_config(
        merge(base, load_config_file(config_file), overrides or {}), source=str(config_file or "options")
    )


def resolve_settings(
    config_file=None, overrides: dict | None = None, resume_run: RunFolder | None = None
) -> tuple[TrainConfig, dict]:
    """The settings stage: ``(resolved config, what the user set)``; the plan keeps off the latter."""
    cfg = resolve_config(config_file, overrides, resume_run)
    return cfg, merge(load_config_file(config_file), overrides or {})


def train(
    data=None,
    out=None,
    *,
    images=None,
    masks=None,
    config=None,
    resume: bool = False,
    quiet: bool = False,
    plan=None,
    split: dict | None = None,
    on_epoch=None,
    init=None,
    **overrides,
) -> Path:
    """Train a model on ``data`` (a DATA folder) and write the run folder ``out``.

    ``overrides`` are config fields (see :class:`~biomedseg.runs.config.TrainConfig`), e.g.
    ``epochs=20``, ``time_budget="10m"``, ``model="unet"``. ``plan``: a ``plan.yaml`` from
    ``biomedseg plan`` to use instead of planning now. ``split``: an explicit ``{"train": ids,
    "val": ids}`` (e.g. a cross-validation fold) instead of ``dataset.json``'s or a random one.
    ``on_epoch(epoch, row) -> bool``: called after each validated epoch with its ``metrics.csv``
    row; ``True`` stops training there (the run is finished as usual, e.g. a pruned sweep trial).
    ``init``: a run or CV folder whose weights the new run starts from
    (:mod:`biomedseg.training.warm_start`). Returns the run folder.
    """
    if out is None:
        raise UserError("train: --out RUN is required")
    if init is not None and resume:
        raise UserError(f"{out}: --init starts a new run, --resume continues one; use one of them")
    run = create_run(out, resume)
    source = resolve_init(init) if init is not None else None
    cfg, explicit = resolve_settings(config, overrides, run if resume else None)
    if cfg.epochs is None and cfg.time_budget is None:
        cfg = cfg.model_copy(update={"epochs": DEFAULT_EPOCHS})
    rt = stages.start_runtime(cfg, quiet)
    data_ = load_training_data(cfg, data, images, masks, quiet=rt.quiet, split=split)
    planned, init_entries = {}, {}
    if source is not None:
        cfg, explicit, init_entries = apply_init(cfg, explicit, source, data_)
    if cfg.auto_plan and not resume:
        cfg, planned = plan_config(cfg, explicit, data_, rt.device, plan)
    planned.update(init_entries)
    data_ = at_working_scale(data_, cfg.working_scale, cfg.seed, rt.quiet, cfg.pixel_size)
    parts = stages.build(cfg, data_, rt, init=source)
    if rt.dist.is_main:
        stages.write_artifacts(
            run,
            cfg,
            stages.dataset_info(data_, parts),
            stages.runtime_entries(cfg, rt, data_, parts, planned, explicit),
            resume,
            parent=source.lineage() if source is not None else None,
        )
    trainer = stages.make_trainer(run, cfg, data_, parts, rt, on_epoch)
    started = time.perf_counter()
    state = stages.fit(run, trainer, rt, resume)
    if rt.dist.enabled:
        stages.finish_distributed(run, trainer, rt)
    if rt.dist.is_main:
        stages.finish(run, state, rt, started)
    return run.root


def apply_init(cfg: TrainConfig, explicit: dict, source, data) -> tuple[TrainConfig, dict, dict]:
    """What ``--init`` carries over, applied to ``cfg`` and counted as chosen (the plan keeps off it):
    ``(config, explicit values, plan entries)``."""
    values, entries = init_settings(source, explicit, training_pixel_size(data.train))
    return build_config(merge(cfg.model_dump(), values), source="--init"), merge(explicit, values), entries


def plan_data(
    data=None,
    out=None,
    *,
    images=None,
    masks=None,
    time_budget=None,
    epochs=None,
    device: str | None = None,
    config=None,
    quiet: bool = False,
    split: dict | None = None,
    **overrides,
) -> dict:
    """``biomedseg plan``: fingerprint the training split of ``data`` and write ``plan.yaml``.

    ``time_budget``, ``epochs`` and ``device`` may also come from the ``config`` file or
    ``overrides``, as in ``train``; ``split``: plan for the ``train`` ids of this split. Returns
    ``{"fingerprint": {...}, option: {"value", "reason"}, ...}``. ``train --plan FILE`` uses such a
    file; options set by the user still win.
    """
    from biomedseg.runtime.device import resolve_device

    given = {
        k: v for k, v in {"time_budget": time_budget, "epochs": epochs, "device": device}.items() if v is not None
    }  # unset: an explicit None would win the merge (and is no valid device)
    cfg, explicit = resolve_settings(config, merge(overrides, given))
    dev = resolve_device(cfg.device)
    data_ = load_training_data(cfg, data, images, masks, with_val=False, quiet=quiet, split=split)
    fp = fingerprint_of(data_)
    plan = {
        "model": {
            "value": cfg.model,
            "reason": "architecture the sizes below are planned for "
            "(set with --set model=NAME; see `biomedseg models`)",
        }
    }
    plan.update(plan_now(cfg, explicit, fp, dev, data_.n_classes, data_.setup.channels, measure=True))
    result = {"fingerprint": fp, "time_budget_s": cfg.time_budget, "device": dev.type, **plan}
    if out is not None:
        write_text(Path(out), yaml.safe_dump(result, sort_keys=False))
    return result
