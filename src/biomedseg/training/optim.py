"""Optimisers and learning-rate schedules by name (registries, like models and losses).

Schedules are functions of the training *progress* ``p`` in [0, 1] (iterations done / planned,
or seconds spent / time budget), so a time-budgeted run lays its schedule over the budget.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from biomedseg.errors import UserError

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


SCHEDULES: dict[str, Callable[[float], float]] = {"poly": _poly, "cosine": _cosine, "constant": _constant}


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](model.parameters(), cfg)


class ProgressSchedule:
    """Learning rate ``base_lr * warmup(p) * schedule(p)`` for progress ``p`` in [0, 1]."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, base_lr: float, warmup_fraction: float = 0.0):
        if name not in SCHEDULES:
            raise UserError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
        self.optimizer, self.fn, self.base_lr, self.warmup = optimizer, SCHEDULES[name], base_lr, warmup_fraction

    def factor(self, p: float) -> float:
        w = min(1.0, (p + 1e-3) / self.warmup) if self.warmup > 0 else 1.0
        return w * self.fn(p)

    def step(self, p: float) -> float:
        lr = self.base_lr * self.factor(p)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
