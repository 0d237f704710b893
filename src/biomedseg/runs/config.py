"""Validated training configuration (one flat pydantic model).

Every field can come from a YAML file (``--config``), from the command line (``--set key=value``
or the dedicated flags) or from the automatic plan; the run folder stores the fully resolved
config so a run can be reproduced with ``biomedseg train DATA --config RUN/config.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from biomedseg.core.errors import UserError
from biomedseg.data.splits import DEFAULT_VAL_FRACTION
from biomedseg.engine.defaults import DEFAULT_OVERLAP

#: epochs trained when neither ``epochs`` nor ``time_budget`` is given
DEFAULT_EPOCHS = 50

#: Patch sides (pixels) a training run accepts: below 16 a U-Net has nothing left to pool; above
#: 4096 one patch (with a batch) no longer fits memory.
MIN_PATCH_SIZE = 16
MAX_PATCH_SIZE = 4096

#: each optimiser's own learning rate when the user picks it without one: AdamW's is the rate the
#: planner measured for it (the config default); Adam's is Kingma & Ba's; SGD's is nnU-Net's
#: (with its Nesterov momentum 0.99, the config default); RMSprop's is PyTorch's
DEFAULT_LR: dict[str, float] = {"adamw": 2e-3, "adam": 1e-3, "sgd": 1e-2, "rmsprop": 1e-2}


def parse_duration(text: str | float | int | None) -> float | None:
    """``"10m"`` -> 600.0 seconds; accepts s, m, h suffixes, combinations (``1h30m``) and bare seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"[0-9.]+", s):
        return float(s)
    parts = re.findall(r"([0-9.]+)\s*(h|m|min|s|sec)", s)
    if not parts or "".join(a + b for a, b in parts) != re.sub(r"\s+", "", s):
        raise UserError(f"time budget {text!r}: use e.g. 90s, 10m, 1h30m")
    scale = {"h": 3600, "m": 60, "min": 60, "s": 1, "sec": 1}
    return float(sum(float(a) * scale[b] for a, b in parts))


class TrainConfig(BaseModel):
    """All settings of a training run, with their defaults."""

    # every number has its valid range; NaN and infinities are refused everywhere
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    # network and objective
    model: str = "unet"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    loss: str = "dice+ce"
    # image-level head (model_kwargs.classifier_head: true, or `train --classifier-head`): weight of
    # its BCE loss "the patch contains foreground", added to the segmentation loss
    classifier_loss_weight: float = Field(0.1, ge=0.0)
    class_weights: str = "none"  # none | inverse | median | "w0,w1,..."
    # optimisation
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adamw"
    lr: float = Field(DEFAULT_LR["adamw"], gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.99, ge=0.0, lt=1.0)
    schedule: Literal["poly", "cosine", "constant", "step", "plateau"] = "poly"
    warmup_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    grad_clip: float = Field(12.0, gt=0.0)
    # moving average of the weights, used by validation and saved in best.pt/last.pt (training/ema.py):
    # false = off, true = decay from the expected number of steps, a number in (0, 1) = the decay
    ema: bool | float = False
    # the epoch best.pt holds (training/selection.py): best = the highest validation Dice, smoothed =
    # the highest mean of the last validations (a few validation images are noisy), last = the final one
    select: Literal["best", "smoothed", "last"] = "best"
    # length
    epochs: int | None = Field(None, ge=1)
    time_budget: float | None = Field(None, gt=0.0)  # seconds; CLI accepts "10m"
    iterations_per_epoch: int | None = Field(None, ge=1)  # default: one pass over the training images' area
    # patches and sampling
    # networks pad their input to the multiple they need (models.registry.PadToMultiple): any size works
    patch_size: int = Field(256, ge=MIN_PATCH_SIZE, le=MAX_PATCH_SIZE)
    batch_size: int = Field(8, ge=1)
    # images are shrunk by this factor for the network (anti-aliased); predictions come back to the
    # native size before the argmax (engine/scaled.py). The plan picks it from object sizes.
    working_scale: float = Field(1.0, gt=0.0, le=1.0)
    # (y, x) µm of the training data's pixels (the plan's median, where files or dataset.json state
    # them): images of another pixel size are resampled to it for training, validation and prediction
    pixel_size: list[float] | None = None
    fg_oversample: float = Field(0.33, ge=0.0, le=1.0)  # probability: 1 = every patch centred on foreground
    augment: str | list[str | dict[str, Any]] = "default"  # a preset name, or a list of {name: ..., p: ...} entries
    # intensity: z-score per channel; clip_zscore clips at the 0.5/99.5 percentiles first;
    # auto: clip_zscore for data deeper than 8 bits, zscore for 8-bit data
    normalization: Literal["auto", "zscore", "clip_zscore"] = "auto"
    # data
    val_fraction: float = Field(DEFAULT_VAL_FRACTION, ge=0.0, lt=1.0)
    classes: list[str] | None = None
    background: str | int | None = "auto"  # class excluded from mean Dice; auto: class named background
    palette: list[list[int]] | None = None
    # stored mask value of unlabelled pixels (partial labels, scribbles): a grey value or [r, g, b];
    # default: dataset.json's ignore_value, else inferred where unambiguous (class indices plus 255);
    # "none": no unlabelled value (not even inferred)
    ignore_value: int | list[int] | Literal["none"] | None = None
    # an image without a mask file is "not labelled" (left out of training) instead of an error
    allow_unlabelled: bool = False
    channels: int | None = Field(None, ge=1)  # input channels; default: from the data
    exclude: list[str] = Field(default_factory=list)  # sample ids to leave out (label conflicts)
    # validation / inference
    overlap: float = Field(DEFAULT_OVERLAP, ge=0.0, lt=1.0)
    val_every: int = Field(1, ge=1)
    # self-configuration: plan values apply to every option not set explicitly
    auto_plan: bool = True
    # runtime
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None  # None: on for CUDA, off for CPU (slower there, docs/experiments.md)
    num_threads: int | None = Field(None, ge=1)
    # worker processes making training batches; 0 = one background thread; None: 0 on a CPU (workers
    # gained nothing there, measured), min(cores - 1, 12) on CUDA (runtime.device.loader_workers)
    num_workers: int | None = Field(None, ge=0)
    # None: deterministic algorithms on CPU; on CUDA cudnn benchmark mode (fastest kernels, not bitwise reproducible)
    deterministic: bool | None = None
    compile: bool | str = False  # torch.compile the training model: True (inductor) or a backend name

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v):
        return parse_duration(v)

    @field_validator("ema", mode="before")
    @classmethod
    def _ema_decay(cls, v):
        if not isinstance(v, bool) and isinstance(v, (int, float)) and not 0.0 < v < 1.0:
            raise ValueError("expected true, false or a decay between 0 and 1")
        return v

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _parse_value(text: str) -> Any:
    """Command-line ``--set key=value`` values are YAML scalars/lists (``0.1``, ``[a, b]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["lr=0.01", "model_kwargs.depth=4"]`` -> ``{"lr": 0.01, "model_kwargs": {"depth": 4}}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return out


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    from biomedseg.runs.records import read_yaml_mapping

    return read_yaml_mapping(path, "config file", "expected a mapping of option: value")


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; nested dicts (model_kwargs) merge key by key.

    An explicit ``None`` (``--set time_budget=null``, ``time_budget: null`` in a file) wins too: it
    undoes an earlier layer's value. Callers leave unset options out (the CLI drops its unset flags).
    """
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = {**out[k], **v}
            else:
                out[k] = v
    return out


def build_config(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate ``values`` into a :class:`TrainConfig`; problems become one-line UserErrors.

    ``model_kwargs.classifier_head: true`` with an architecture that cannot take a head is one
    too (naming the model).
    """
    try:
        cfg = TrainConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "?"
        given = f" = {err['input']!r}" if isinstance(err.get("input"), (int, float, str)) else ""
        raise UserError(f"{source}: option {loc!r}{given}: {err['msg']}") from None
    if cfg.model_kwargs.get("classifier_head"):
        from biomedseg.models.heads import check_classifier_support

        check_classifier_support(cfg.model)
    return cfg
