"""Measuring a training step for the planner, robustly: several steps per measurement (median),
several measurements per width (median, one more when they disagree), the spread reported.

On a loaded machine one measured 2.1 s step (instead of ~0.5 s) turned a width-32 plan into
width 16; :func:`measure_robustly` makes one such measurement outvoted, and the plan's reason
shows the spread.
"""

from __future__ import annotations

import numpy as np

#: a step time is the median of this many measurements (each the median of
#: ``STEPS_PER_MEASUREMENT`` timed steps; one warm-up step per network, not per measurement) ...
STEP_MEASUREMENTS = 2
#: ... and of one more when they differ by more than this ratio (a loaded machine: one measured
#: 2.1 s instead of ~0.5 s flipped a width-32 plan to 16)
INCONSISTENT_RATIO = 1.25
MAX_STEP_MEASUREMENTS = 3
STEPS_PER_MEASUREMENT = 1


class StepBench:
    """One network, optimiser and batch to time training steps (forward, backward, AdamW) with.

    ``depth`` and ``base`` (the width option, see :func:`~biomedseg.models.registry.width_option`)
    are passed to the factory when given. ``probe_batch`` runs a smaller batch; :meth:`seconds`
    scales its time by ``batch / probe_batch`` (used for costly networks, whose steps last seconds).
    The first step warms up allocators and kernels and is not timed.
    """

    def __init__(
        self,
        channels: int,
        n_classes: int,
        patch: int,
        batch: int,
        depth: int | None = None,
        base: int | None = None,
        device: str = "cpu",
        model: str = "unet",
        probe_batch: int | None = None,
    ):
        import torch

        from biomedseg.models import create_model
        from biomedseg.models.registry import width_option
        from biomedseg.runtime.device import use_channels_last

        kwargs = {} if depth is None else {"depth": depth}
        option = width_option(model)
        if base is not None and option is not None:
            kwargs[option[0]] = base
        cl = torch.channels_last if use_channels_last(None, torch.device(device)) else torch.contiguous_format
        self.net = create_model(model, channels, n_classes, **kwargs).to(device).to(memory_format=cl)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3)
        b = min(batch, probe_batch) if probe_batch else batch
        self.x = torch.randn(b, channels, patch, patch, device=device).contiguous(memory_format=cl)
        self.y = torch.randint(0, n_classes, (b, patch, patch), device=device)
        self.device, self.scale = device, batch / b
        self._step()  # warm-up

    def _step(self) -> float:
        import time

        import torch

        t0 = time.perf_counter()
        out = self.net(self.x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        loss = torch.nn.functional.cross_entropy(out, self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def seconds(self, repeats: int = 1) -> float:
        """Seconds of one full-batch step: the median of ``repeats`` timed steps."""
        return float(np.median([self._step() for _ in range(repeats)])) * self.scale


def measure_step_time(
    channels: int,
    n_classes: int,
    patch: int,
    batch: int,
    depth: int | None = None,
    base: int | None = None,
    device: str = "cpu",
    repeats: int = 1,
    model: str = "unet",
    probe_batch: int | None = None,
) -> float:
    """Seconds of one training step of ``model`` measured here: a warm-up step, then the median of
    ``repeats`` timed ones (:class:`StepBench`)."""
    return StepBench(channels, n_classes, patch, batch, depth, base, device, model, probe_batch).seconds(repeats)


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
    Each call times ``STEPS_PER_MEASUREMENT`` steps; calls for the same sizes (the planner's
    repeated measurements, :func:`measure_robustly`) reuse the warmed-up network, so measuring
    twice costs one step more, not a new warm-up.
    """
    benches: dict[tuple, StepBench] = {}

    def measure(patch, batch, depth, width):
        key = (patch, batch, depth, width)
        if key not in benches:
            benches.clear()  # one network in memory at a time
            if model == "unet":
                benches[key] = StepBench(channels, n_classes, patch, batch, depth, width, device)
            else:
                benches[key] = StepBench(
                    channels, n_classes, patch, batch, None, width, device, model=model, probe_batch=2
                )
        return benches[key].seconds(STEPS_PER_MEASUREMENT)

    return measure
