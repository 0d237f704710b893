"""Model registry: one factory per architecture name.

``create_model(name, in_channels, n_classes, **kw)`` returns an ``nn.Module`` mapping
``(N, in_channels, H, W) float32`` to ``(N, n_classes, H, W)`` logits for any ``H, W``:
inputs are padded (reflect) to the network's required multiple and cropped back, so no
architecture ever asks for a size divisible by 32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from biomedseg.core.errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    multiple: int  # spatial size the bare network needs (2 ** number of poolings)
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, multiple: int | Callable[..., int], description: str = ""):
    """Decorator registering ``factory(in_channels, n_classes, **kw) -> nn.Module``.

    ``multiple`` is the input-size multiple the bare network needs; a callable receives the
    factory's keyword arguments (e.g. depth) and returns it.
    """

    def deco(factory):
        _REGISTRY[name] = ModelEntry(
            name, factory, multiple, description or (factory.__doc__ or "").strip().split("\n")[0]
        )
        return factory

    return deco


def _ensure_loaded() -> None:
    # Importing the family modules registers them.
    from biomedseg.models import families  # noqa: F401


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


#: keyword arguments that set a network's width (channels of its first stage), in order of preference
WIDTH_KWARGS = ("base_channels", "width")


def width_option(name: str) -> tuple[str, int] | None:
    """``(keyword, default)`` of the option that sets architecture ``name``'s width, or ``None``.

    Every channel count of the registered families scales with it, so halving it makes a
    network about 4x cheaper (FLOPs and parameters). Used by the planner to fit short budgets.
    """
    import inspect

    params = inspect.signature(get_entry(name).factory).parameters
    for key in WIDTH_KWARGS:
        p = params.get(key)
        if p is not None and isinstance(p.default, int):
            return key, int(p.default)
    return None


class PadToMultiple(nn.Module):
    """Wraps a network: reflect-pads ``(N, C, H, W)`` up to a multiple, crops the output back."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net = net
        self.multiple = int(multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = self.net(x)
        if isinstance(y, (list, tuple)):  # deep supervision heads during training
            return type(y)(t[..., :h, :w] for t in y)
        return y[..., :h, :w]


def create_model(name: str, in_channels: int, n_classes: int, **kwargs) -> nn.Module:
    """Build architecture ``name`` for ``in_channels`` inputs and ``n_classes`` outputs.

    Returns a :class:`PadToMultiple`-wrapped module producing ``(N, n_classes, H, W)`` logits.
    Unknown keyword arguments raise a :class:`UserError` naming them.
    """
    entry = get_entry(name)
    try:
        net = entry.factory(in_channels, n_classes, **kwargs)
    except TypeError as exc:  # wrong keyword in config
        raise UserError(f"model {name!r}: {exc}") from None
    multiple = entry.multiple(**kwargs) if callable(entry.multiple) else entry.multiple
    return PadToMultiple(net, multiple)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
