"""An exponential moving average (EMA) of the network's weights: config ``ema``.

``ema: false`` (the default) trains and saves the weights as they are. ``ema: true`` keeps a copy
of the network whose weights follow the trained ones with an automatic decay; a number in (0, 1)
is the decay itself. The average (parameters and floating-point buffers, e.g. BatchNorm running
statistics; integer buffers are copied) is what validation scores and what ``best.pt``/``last.pt``
hold under ``"model"``, so prediction uses it without knowing about it. The trained weights travel
in the checkpoint's ``"ema"`` entry (``{"online": state_dict, "updates": n}``) so that resuming
continues both; a checkpoint without that entry (older runs, ``ema: false``) loads as before.

Update ``n`` (from 0) uses the decay ``min(decay, (1 + n) / (EMA_WARMUP + n))``: the first steps
are barely averaged, so a short run is not dominated by its early weights. The automatic decay has
a half-life of ``EMA_HALF_LIFE_SHARE`` of the run's expected number of steps (estimated at each
step from the progress of the schedule: steps done / share of the epochs or the time budget spent),
within ``[EMA_MIN_DECAY, EMA_MAX_DECAY]``.

One update is a single ``torch._foreach_lerp_`` over the weights: about 0.2 ms per step for a
U-Net 16..256 (1.6 M parameters) on one CPU thread, against about 500 ms for its training step at
batch 8 of 256x256 patches (``AveragedModel`` with ``get_ema_multi_avg_fn``: 0.7-1.2 ms).
"""

from __future__ import annotations

import copy
import math

import torch

#: half-life of the automatic decay, as a share of the expected number of training steps
EMA_HALF_LIFE_SHARE = 0.05
#: bounds of the automatic decay (half-lives of about 6.6 and 6,900 steps)
EMA_MIN_DECAY = 0.9
EMA_MAX_DECAY = 0.9999
#: warm-up of the decay: update n uses at most (1 + n) / (EMA_WARMUP + n)
EMA_WARMUP = 10


def auto_decay(expected_steps: float) -> float:
    """The decay whose half-life is ``EMA_HALF_LIFE_SHARE`` of ``expected_steps``, within the bounds."""
    half_life = EMA_HALF_LIFE_SHARE * expected_steps
    decay = 0.5 ** (1.0 / half_life) if half_life > 0 else 0.0
    return min(EMA_MAX_DECAY, max(EMA_MIN_DECAY, decay))


def expected_steps(iteration: int, progress: float) -> float:
    """Steps the whole run will take when ``iteration`` steps made ``progress`` (0..1) of it."""
    return iteration / progress if progress > 0 else math.inf


class WeightAverage:
    """The moving average of ``net``'s weights (``decay=None``: automatic, see the module text).

    ``module`` is the averaged copy of ``net`` (eval mode, no gradients); :meth:`update` moves it
    towards ``net``'s current weights. ``warmup=None`` turns the warm-up of the decay off.
    """

    def __init__(self, net: torch.nn.Module, decay: float | None = None, warmup: int | None = EMA_WARMUP):
        self.net, self.fixed_decay, self.warmup = net, decay, warmup
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.updates = 0
        src, avg = net.state_dict(), self.module.state_dict()
        self._float = [k for k, v in src.items() if v.is_floating_point()]
        self._other = [k for k, v in src.items() if not v.is_floating_point()]
        self._src = [src[k] for k in self._float], [src[k] for k in self._other]
        self._avg = [avg[k] for k in self._float], [avg[k] for k in self._other]

    def decay(self, iteration: int = 0, progress: float = 0.0) -> float:
        """The decay of the next update (``iteration`` steps done, ``progress`` of the run spent)."""
        d = self.fixed_decay if self.fixed_decay is not None else auto_decay(expected_steps(iteration, progress))
        if self.warmup is not None:
            d = min(d, (1 + self.updates) / (self.warmup + self.updates))
        return d

    @torch.no_grad()
    def update(self, iteration: int = 0, progress: float = 0.0) -> None:
        """Move the average towards the trained weights: ``avg += (1 - decay) * (w - avg)``."""
        d = self.decay(iteration, progress)
        if self._avg[0]:
            torch._foreach_lerp_(self._avg[0], self._src[0], 1.0 - d)
        for a, s in zip(*(self._avg[1], self._src[1])):
            a.copy_(s)
        self.updates += 1

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again from the trained weights (no updates yet)."""
        for a, s in zip(self._avg[0] + self._avg[1], self._src[0] + self._src[1]):
            a.copy_(s)
        self.updates = 0


def make_weight_average(ema: bool | float, net: torch.nn.Module) -> WeightAverage | None:
    """The config's ``ema`` (false / true / a decay) as a :class:`WeightAverage` of ``net``, or None."""
    if ema is False:
        return None
    return WeightAverage(net, None if ema is True else float(ema))


def checkpoint_weights(net: torch.nn.Module, average: WeightAverage | None) -> dict:
    """The weight entries of a checkpoint: ``model`` (what prediction uses) and, with an average,
    ``ema`` (the trained weights and the number of updates)."""
    if average is None:
        return {"model": net.state_dict()}
    return {"model": average.module.state_dict(), "ema": {"online": net.state_dict(), "updates": average.updates}}


def restore_weights(ck: dict, net: torch.nn.Module, average: WeightAverage | None) -> None:
    """Load a checkpoint's weights into ``net`` (and the average): the inverse of
    :func:`checkpoint_weights`. Without an ``ema`` entry the average starts from ``model``."""
    saved = ck.get("ema")
    net.load_state_dict(saved["online"] if saved else ck["model"])
    if average is None:
        return
    if saved:
        average.module.load_state_dict(ck["model"])
        average.updates = int(saved["updates"])
    else:
        average.reset()
