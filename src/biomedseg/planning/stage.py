"""The plan stage of ``train`` and ``biomedseg plan``: fingerprint + budget -> config with reasons.

:func:`plan_config` is shared by both commands: it fingerprints the training samples, makes a plan
(:func:`~biomedseg.planning.planner.make_plan`) or reads one from a ``plan.yaml``, keeps the
entries the chosen architecture takes, and applies every entry the user did not set.
"""

from __future__ import annotations

from biomedseg.models.registry import width_option
from biomedseg.planning.augment import augment_fingerprint
from biomedseg.planning.planner import (
    apply_plan,
    compile_possible,
    fingerprint_from_samples,
    make_plan,
    plan_for_optimizer,
    step_timer,
)
from biomedseg.runs import read_plan
from biomedseg.runs.config import TrainConfig, build_config

USER_REASON = "set by the user"


def plan_applies(key: str, model_name: str, model_kwargs: dict) -> bool:
    """Plan entries for ``model_kwargs.X`` apply only when the chosen architecture takes ``X``.

    The default U-Net takes the planned depth and width; other architectures keep their published
    depth and take only the planned width (narrowed when their published width gets too few
    steps in the budget), and never when pretrained weights fix the width.
    """
    if not key.startswith("model_kwargs."):
        return True
    if model_name == "unet":
        return True
    option = width_option(model_name)
    return option is not None and key == f"model_kwargs.{option[0]}" and not model_kwargs.get("pretrained")


def width_is_planned(cfg: TrainConfig, explicit: dict) -> bool:
    """Whether the network width is the plan's to choose (not set by the user, no pretrained weights)."""
    option = width_option(cfg.model)
    return (
        option is not None
        and option[0] not in (explicit.get("model_kwargs") or {})
        and not cfg.model_kwargs.get("pretrained")
    )


def fingerprint_of(data) -> dict:
    """The planner's fingerprint of the training samples of a :class:`~biomedseg.training.data_setup.TrainingData`."""
    s = data.setup
    fp = fingerprint_from_samples(
        data.train, data.n_classes, s.classes, s.background, s.channels, pixel_size=training_pixel_size(data.train)
    )
    fp["n_val_images"] = len(s.split.get("val", []))
    fp["augment"] = augment_fingerprint(data.train, s.channels)  # native images: before any working scale
    return fp


def training_pixel_size(samples) -> list[float] | None:
    """Median physical pixel size ``[y, x]`` (µm) of the training samples (``dataset.json``
    ``pixel_size``, else the files' metadata), ``None`` when none states one."""
    from biomedseg.io.pixel_size import summarize_pixel_sizes

    return summarize_pixel_sizes([s.pixel_size for s in samples])["median"]


def plan_now(
    cfg: TrainConfig,
    explicit: dict,
    fingerprint: dict,
    device,
    n_classes: int,
    channels: int,
    measure: bool | None = None,
) -> dict:
    """Plan entries for ``cfg.model`` on ``device`` within ``cfg.time_budget`` / ``cfg.epochs``.

    A training step is measured on ``device`` when ``measure`` is true, or (``None``) when the
    width is the plan's to choose.
    """
    measure = width_is_planned(cfg, explicit) if measure is None else measure
    timer = step_timer(channels, n_classes, str(device), model=cfg.model) if measure else None
    plan = make_plan(
        fingerprint,
        cfg.time_budget,
        device.type,
        cfg.epochs,
        step_time=timer,
        model=cfg.model,
        width_option=width_option(cfg.model),
        can_compile=compile_possible(explicit),
    )
    return plan_for_optimizer(plan, explicit)


def plan_from_file(cfg: TrainConfig, explicit: dict, plan_file) -> tuple[TrainConfig, dict]:
    """Entries of a ``plan.yaml``; its architecture is adopted unless the user chose another one,
    in which case the sizes planned for the other architecture are dropped."""
    planned = read_plan(plan_file)
    planned_for = planned.get("model", {}).get("value", "unet")
    if "model" in explicit and explicit["model"] != planned_for:
        planned = {k: v for k, v in planned.items() if not k.startswith("model_kwargs.") and k != "model"}
        return cfg, planned
    return build_config({**cfg.model_dump(), "model": planned_for}, source="plan"), planned


def mark_user_values(planned: dict, explicit: dict) -> dict:
    """Entries the user set say so, with the user's value (the plan's reason no longer applies)."""
    out = dict(planned)
    for key in planned:
        top, _, sub = key.partition(".")
        if top in explicit and (not sub or sub in (explicit.get(top) or {})):
            out[key] = {"value": explicit[top][sub] if sub else explicit[top], "reason": USER_REASON}
    return out


def plan_config(cfg: TrainConfig, explicit: dict, data, device, plan_file=None) -> tuple[TrainConfig, dict]:
    """The plan stage of ``train``: ``(config with the plan applied, plan entries + fingerprint)``."""
    fingerprint = fingerprint_of(data)
    if plan_file is not None:
        cfg, planned = plan_from_file(cfg, explicit, plan_file)
    else:
        planned = plan_now(cfg, explicit, fingerprint, device, data.n_classes, data.setup.channels)
    planned = {k: v for k, v in planned.items() if plan_applies(k, cfg.model, cfg.model_kwargs)}
    planned = plan_for_optimizer(planned, explicit)  # a plan file's rate is its planned optimiser's too
    cfg = build_config(apply_plan(cfg.model_dump(), planned, explicit), source="plan")
    planned = mark_user_values(planned, explicit)
    planned["fingerprint"] = fingerprint
    return cfg, planned
