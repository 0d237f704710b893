"""Optimisers and learning-rate schedules by name (registries, like models and losses).

Schedules are functions of the training *progress* ``p`` in [0, 1] (iterations done / planned,
or seconds spent / time budget), so a time-budgeted run lays its schedule over the budget:

- ``poly``: ``(1 - p) ** 0.9`` (nnU-Net); ``cosine``: half cosine to 0; ``constant``;
- ``step``: x0.1 at 50 % and again at 75 % of the progress;
- ``plateau``: constant until the validation score stops improving: after ``patience``
  validations without improvement the rate is multiplied by ``factor`` (0.5). It needs the
  score: call :meth:`ProgressSchedule.observe` after each validation (a no-op for the others).

Every schedule is multiplied by a linear warm-up over the first ``warmup_fraction`` of progress,
and by the back-off factor the trainer lowers after a non-finite loss (:meth:`ProgressSchedule.back_off`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from biomedseg.core.errors import UserError
from biomedseg.runs.config import DEFAULT_LR  # noqa: F401  (re-exported: the optimisers' defaults)

OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay
    ),
    "rmsprop": lambda params, cfg: torch.optim.RMSprop(
        params, lr=cfg.lr, momentum=min(cfg.momentum, 0.9), weight_decay=cfg.weight_decay
    ),
}


def _poly(p: float) -> float:
    return (1.0 - min(p, 1.0)) ** 0.9


def _cosine(p: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))


def _constant(p: float) -> float:
    return 1.0


def _step(p: float) -> float:
    return 0.1 ** ((p >= 0.5) + (p >= 0.75))


#: progress -> factor; ``plateau`` is ``constant`` here, its decay comes from ``observe``.
SCHEDULES: dict[str, Callable[[float], float]] = {
    "poly": _poly,
    "cosine": _cosine,
    "constant": _constant,
    "step": _step,
    "plateau": _constant,
}


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](model.parameters(), cfg)


class ProgressSchedule:
    """Learning rate ``base_lr * warmup(p) * schedule(p) * plateau_factor`` for progress ``p``.

    ``plateau_factor`` stays 1 except for the ``plateau`` schedule, where :meth:`observe`
    multiplies it by ``factor`` after ``patience`` validations without an improvement of more
    than ``min_delta`` (``mode="max"``: higher is better, e.g. Dice; ``"min"`` for a loss).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        base_lr: float,
        warmup_fraction: float = 0.0,
        patience: int = 3,
        factor: float = 0.5,
        mode: str = "max",
        min_delta: float = 1e-4,
        min_factor: float = 1e-3,
    ):
        if name not in SCHEDULES:
            raise UserError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
        if mode not in ("max", "min"):
            raise UserError(f"schedule mode {mode!r}: use max or min")
        self.optimizer, self.fn, self.base_lr, self.warmup = optimizer, SCHEDULES[name], base_lr, warmup_fraction
        self.name = name
        self.patience, self.decay, self.mode = int(patience), float(factor), mode
        self.min_delta, self.min_factor = float(min_delta), float(min_factor)
        self.plateau_factor = 1.0
        self.backoff = 1.0  # lowered by back_off() after non-finite losses
        self.best: float | None = None
        self.bad = 0

    def factor(self, p: float) -> float:
        w = min(1.0, (p + 1e-3) / self.warmup) if self.warmup > 0 else 1.0
        return w * self.fn(p) * self.plateau_factor * self.backoff

    def back_off(self, factor: float) -> None:
        """Multiply every later learning rate by ``factor`` (after a non-finite loss)."""
        self.backoff *= float(factor)

    def step(self, p: float) -> float:
        lr = self.base_lr * self.factor(p)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe(self, metric: float) -> float:
        """Report a validation score; returns the current plateau factor (1 unless ``plateau``)."""
        if self.name != "plateau" or metric is None or metric != metric:  # NaN: ignore
            return self.plateau_factor
        better = self.best is None or (
            metric > self.best + self.min_delta if self.mode == "max" else metric < self.best - self.min_delta
        )
        if better:
            self.best, self.bad = float(metric), 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.plateau_factor = max(self.plateau_factor * self.decay, self.min_factor)
                self.bad = 0
        return self.plateau_factor

    def state_dict(self) -> dict:
        """Plateau and back-off state, for checkpoints (the progress-based part needs none)."""
        return {"plateau_factor": self.plateau_factor, "best": self.best, "bad": self.bad, "backoff": self.backoff}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_factor = float(state.get("plateau_factor", 1.0))
        self.best = state.get("best")
        self.bad = int(state.get("bad", 0))
        self.backoff = float(state.get("backoff", 1.0))
