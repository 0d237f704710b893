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

The average is PyTorch's ``torch.optim.swa_utils.AveragedModel`` (``use_buffers=True``) with an
EMA function of the decay above (one ``torch._foreach_lerp_`` over the floating-point weights; the
integer buffers are copied). Its first update averages too (the copy it starts from counts as one
average). Checkpoints hold the averaged network's own state dict, as before.
"""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel

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
        self._next = 0.0  # the decay of the update in progress, read by _ema
        self.averaged = AveragedModel(net, multi_avg_fn=self._ema, use_buffers=True)
        self.averaged.requires_grad_(False)
        self.module = self.averaged.module.eval()
        self.updates = 0

    @property
    def updates(self) -> int:
        """Updates made (the average starts as a copy of ``net``: AveragedModel counts it as one)."""
        return int(self.averaged.n_averaged) - 1

    @updates.setter
    def updates(self, n: int) -> None:
        self.averaged.n_averaged.fill_(int(n) + 1)

    @torch.no_grad()
    def _ema(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - self._next)
        else:  # integer buffers (BatchNorm's counter): copied
            torch._foreach_copy_(averaged, current)

    def decay(self, iteration: int = 0, progress: float = 0.0) -> float:
        """The decay of the next update (``iteration`` steps done, ``progress`` of the run spent)."""
        d = self.fixed_decay if self.fixed_decay is not None else auto_decay(expected_steps(iteration, progress))
        if self.warmup is not None:
            d = min(d, (1 + self.updates) / (self.warmup + self.updates))
        return d

    @torch.no_grad()
    def update(self, iteration: int = 0, progress: float = 0.0) -> None:
        """Move the average towards the trained weights: ``avg += (1 - decay) * (w - avg)``."""
        self._next = self.decay(iteration, progress)
        self.averaged.update_parameters(self.net)

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again from the trained weights (no updates yet)."""
        for a, s in zip(self.module.state_dict().values(), self.net.state_dict().values()):
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
