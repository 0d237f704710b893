"""The counters of the training loop (:class:`TrainState`, saved in the checkpoints), its wall
clock and what one epoch's steps produced."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Counters that a resumed run continues from."""

    epoch: int = 0
    iteration: int = 0
    elapsed: float = 0.0  # training seconds spent so far (all sessions)
    best_score: float = -1.0
    best_epoch: int = 0
    val_scores: list = field(default_factory=list)  # validation Dice of the epochs validated so far


@dataclass
class Clock:
    """Wall clock of one ``fit`` call: everything (sampling waits, validation, checkpoints) counts."""

    elapsed_before: float
    start: float = field(default_factory=lambda: time.perf_counter())  # looked up at call time
    step_cost: float = 0.0  # seconds per step (running estimate)
    val_cost: float = 0.0  # seconds one validation took (measured)

    def tick(self, state: TrainState) -> None:
        state.elapsed = self.elapsed_before + (time.perf_counter() - self.start)

    def step_took(self, seconds: float) -> None:
        self.step_cost = seconds if self.step_cost == 0 else 0.9 * self.step_cost + 0.1 * seconds

    def near_budget(self, state: TrainState, budget: float) -> bool:
        """One more step plus the final validation would pass the budget."""
        return state.elapsed + 2 * self.step_cost + self.val_cost * 1.5 >= budget


@dataclass
class EpochTally:
    """What the steps of one epoch produced."""

    start: float = field(default_factory=lambda: time.perf_counter())  # looked up at call time
    steps: int = 0  # steps run, skipped ones included
    skipped: int = 0  # steps skipped for a non-finite loss
    losses: list = field(default_factory=list)
    cls_losses: list = field(default_factory=list)
    n_images: int = 0
    data_wait: float = 0.0
    lr: float = float("nan")
    stop: bool = False  # the time budget ended the epoch early
