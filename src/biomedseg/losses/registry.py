"""The loss registry and the adapters shared by the loss modules.

:mod:`biomedseg.losses.build` (core losses, spec parsing, :func:`~biomedseg.losses.build.build_loss`) and
:mod:`biomedseg.losses.extra` (further losses) both register their factories here, so the
imports point one way: ``losses`` -> ``losses_extra`` -> ``losses_registry``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str):
    """Decorator: ``factory(n_classes, class_weights, **params) -> nn.Module``."""

    def deco(factory):
        _LOSSES[name] = factory
        return factory

    return deco


def list_losses() -> list[str]:
    return sorted(_LOSSES)


class _OneHotLoss(nn.Module):
    """Adapts a MONAI loss that wants a ``(N, 1, H, W)`` target."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(logits.float(), target.unsqueeze(1))


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.lower() in {"1", "true", "yes", "on"}
    return bool(v)
