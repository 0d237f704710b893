"""Size and cost of an architecture: parameters and GFLOPs per image.

FLOPs are counted with forward hooks on ``Conv2d``, ``ConvTranspose2d`` and ``Linear`` (each
multiply-add counts 2; norms, activations, pooling and bias additions are ignored, as is
usual). The forward pass runs on the ``meta`` device where the network supports it (no memory,
no compute), else on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_flops(module: nn.Conv2d, inputs, output) -> int:
    kh, kw = module.kernel_size
    per_output = (module.in_channels // module.groups) * kh * kw
    return 2 * output.numel() * per_output


def _deconv_flops(module: nn.ConvTranspose2d, inputs, output) -> int:
    kh, kw = module.kernel_size
    x = inputs[0]
    per_input = (module.out_channels // module.groups) * kh * kw
    return 2 * x.numel() * per_input


def _linear_flops(module: nn.Linear, inputs, output) -> int:
    return 2 * output.numel() * module.in_features


_COUNTERS = ((nn.ConvTranspose2d, _deconv_flops), (nn.Conv2d, _conv_flops), (nn.Linear, _linear_flops))


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` (2 per multiply-add of Conv2d / ConvTranspose2d / Linear layers)."""
    total = [0]

    def hook(module, inputs, output):
        for cls, fn in _COUNTERS:
            if isinstance(module, cls):
                total[0] += fn(module, inputs, output)
                return

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


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
