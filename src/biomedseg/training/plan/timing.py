"""Measuring a training step for the planner, robustly: several steps per measurement (median),
several measurements per width (median, one more when they disagree), the spread reported.

On a loaded machine one measured 2.1 s step (instead of ~0.5 s) turned a width-32 plan into
width 16; :func:`measure_robustly` makes one such measurement outvoted, and the plan's reason
shows the spread.
"""

from __future__ import annotations

import numpy as np

#: a step time is the median of this many measurements (each the median of
#: ``STEPS_PER_MEASUREMENT`` timed steps after a warm-up one) ...
STEP_MEASUREMENTS = 2
#: ... and of one more when they differ by more than this ratio (a loaded machine: one measured
#: 2.1 s instead of ~0.5 s flipped a width-32 plan to 16)
INCONSISTENT_RATIO = 1.25
MAX_STEP_MEASUREMENTS = 3
STEPS_PER_MEASUREMENT = 3


def measure_step_time(channels: int, n_classes: int, patch: int, batch: int, depth: int | None = None,
                      base: int | None = None, device: str = "cpu", repeats: int = 1, model: str = "unet",
                      probe_batch: int | None = None) -> float:
    """Seconds of one training step (forward, backward, AdamW) of ``model``, measured here.

    ``depth`` and ``base`` (the width option, see :func:`~biomedseg.models.registry.width_option`)
    are passed to the factory when given. ``probe_batch`` measures a smaller batch and scales the
    time by ``batch / probe_batch`` (used for costly networks, whose steps last seconds).
    """
    import time

    import torch

    from biomedseg.runtime.device import use_channels_last
    from biomedseg.models import create_model
    from biomedseg.models.registry import width_option

    kwargs = {}
    if depth is not None:
        kwargs["depth"] = depth
    option = width_option(model)
    if base is not None and option is not None:
        kwargs[option[0]] = base
    net = create_model(model, channels, n_classes, **kwargs).to(device)
    cl = torch.channels_last if use_channels_last(None, torch.device(device)) else torch.contiguous_format
    net = net.to(memory_format=cl)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    b = min(batch, probe_batch) if probe_batch else batch
    x = torch.randn(b, channels, patch, patch, device=device).contiguous(memory_format=cl)
    y = torch.randint(0, n_classes, (b, patch, patch), device=device)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = net(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) * batch / b


def measure_robustly(step_time, patch: int, batch: int, depth: int, width: int) -> tuple[float, str]:
    """``(seconds per step, its spread in words)``: the median of ``STEP_MEASUREMENTS`` calls of
    ``step_time``, and of one more (up to ``MAX_STEP_MEASUREMENTS``) while they disagree by more
    than ``INCONSISTENT_RATIO``, so one noisy measurement does not decide the plan."""
    times = [float(step_time(patch, batch, depth, width)) for _ in range(STEP_MEASUREMENTS)]
    while max(times) > INCONSISTENT_RATIO * min(times) and len(times) < MAX_STEP_MEASUREMENTS:
        times.append(float(step_time(patch, batch, depth, width)))
    spread = f"median of {len(times)} measurements, {min(times):.2f}-{max(times):.2f}s"
    if len(times) > STEP_MEASUREMENTS:
        spread += f", re-measured as the first {STEP_MEASUREMENTS} differed by over {INCONSISTENT_RATIO:g}x"
    return float(np.median(times)), spread


def step_timer(channels: int, n_classes: int, device: str, model: str = "unet"):
    """``step_time(patch, batch, depth, width)`` callback for :func:`make_plan` on ``device``.

    The default U-Net is measured at the full batch with the planned depth; other architectures
    keep their own depth and are probed with a batch of 2 (their steps can take many seconds).
    Each call is the median of ``STEPS_PER_MEASUREMENT`` timed steps after a warm-up step; the
    planner calls it several times (:func:`measure_robustly`).
    """

    def measure(patch, batch, depth, width):
        if model == "unet":
            return measure_step_time(channels, n_classes, patch, batch, depth, width, device,
                                     repeats=STEPS_PER_MEASUREMENT)
        return measure_step_time(channels, n_classes, patch, batch, None, width, device, model=model,
                                 probe_batch=2, repeats=STEPS_PER_MEASUREMENT)

    return measure
