"""Size and cost of an architecture: parameters and GFLOPs per image.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over the operators the forward
pass runs (convolutions, transposed convolutions, matrix products; each multiply-add counts 2;
norms, activations, pooling and bias additions are ignored, as is usual). The forward pass runs
on the ``meta`` device where the network supports it (no memory, no compute), else on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` (2 per multiply-add of its convolutions and matrix products)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def model_summary(name: str, in_channels: int = 1, n_classes: int = 2, size: int = 256, **kwargs) -> dict:
    """``{"params": int, "gflops": float}`` of architecture ``name`` on one ``size x size`` image.

    ``kwargs`` are model options (e.g. ``base_channels=32``); ``pretrained`` is ignored.
    """
    from biomedseg.models.registry import count_parameters, create_model

    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    model = create_model(name, in_channels, n_classes, **kwargs).eval()
    params = count_parameters(model)
    flops = None
    try:
        meta = model.to("meta")
        flops = count_flops(meta, torch.empty(1, in_channels, size, size, device="meta"))
    except (NotImplementedError, RuntimeError):
        pass
    if flops is None:  # an op without meta support: count on the CPU
        model = create_model(name, in_channels, n_classes, **kwargs).eval()
        flops = count_flops(model, torch.zeros(1, in_channels, size, size))
    return {"params": int(params), "gflops": flops / 1e9}
