"""Which network width a CPU time budget should train, from measured width trials.

A wider network learns more per step but takes fewer steps in the same budget: on the CPUs
measured, the default U-Net at width 32 (32..512 channels) takes 2.2-3.1x as long per step as at
width 16. Which one ends better depends on how many steps the budget buys, so the planner asks the
measurements: :data:`WIDTH_TRIALS` holds side-by-side runs (same data, same budget, same machine,
everything but the width equal) with the steps each width took and its test Dice, each with its
CPU class and where it is written down (``docs/experiments.md``).

:func:`expected_narrow_gain` smooths the trials' Dice gains (narrow minus full) over the full
width's step count on a log scale (a Gaussian kernel, :data:`KERNEL_LOG_WIDTH`), so each dataset
counts and a new trial moves the rule without editing a threshold; :func:`full_width_wins` keeps
the full width when the expected gain of the narrow one is within :data:`TIE_DICE` (a tie goes to
the wider network, which wins on longer budgets). The steps are those the planner measures on the
CPU it runs on, so a slow CPU (fewer steps) gets the narrow network and a fast one the full width.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class WidthTrial(NamedTuple):
    """One side-by-side trial: the full width and the half width trained with the same budget."""

    dataset: str
    cpu: str  #: CPU class and threads of the training runs
    budget_min: float
    full_steps: int
    narrow_steps: int
    full_dice: float  #: test Dice of the foreground class(es), mean
    narrow_dice: float
    source: str

    @property
    def gain(self) -> float:
        """Test Dice of the narrow network minus that of the full one."""
        return self.narrow_dice - self.full_dice


_AVX2_1T, _S13 = "avx2 fp32, 1 thread each", "docs/experiments.md §13"
#: side-by-side trials, width 32 (full) vs 16 (narrow) of the default U-Net
WIDTH_TRIALS: tuple[WidthTrial, ...] = (
    WidthTrial("isbi2012_em", "avx512 fp32, 1 thread each", 10, 71, 190, 0.748, 0.804, "docs/experiments.md §1"),
    WidthTrial("isbi2012_em", "avx512 fp32, 2 threads", 30, 1062, 2283, 0.8302, 0.8310, "docs/experiments.md §7"),
    WidthTrial("breast ultrasound (not shared)", "avx2 fp32, 2 threads", 15, 431, 1107, 0.668, 0.744, "issue 27"),
    # session 11, `--cpu-class avx2` environment, both widths side by side with 1 thread each
    WidthTrial("hc18_fetal_head", _AVX2_1T, 15, 286, 925, 0.9635, 0.9778, _S13),
    WidthTrial("monuseg_histology", _AVX2_1T, 15, 1092, 3569, 0.8007, 0.7857, _S13),
    WidthTrial("dsb2018_nuclei", _AVX2_1T, 15, 1456, 4631, 0.8903, 0.8920, _S13),
    WidthTrial("darkfield_bacteria", _AVX2_1T, 15, 355, 1169, 0.5005, 0.7294, _S13),
    WidthTrial("drive_retina", _AVX2_1T, 15, 1462, 4812, 0.8150, 0.8155, _S13),
)
#: an expected Dice gain of the narrow network up to this is a tie, which the full width takes
TIE_DICE = 0.005
#: standard deviation (natural log of steps) of the kernel that smooths the trials' gains: a
#: trial counts half at 1.5x (or 1/1.5x) its steps
KERNEL_LOG_WIDTH = 0.35


def expected_narrow_gain(full_steps: float, trials=WIDTH_TRIALS) -> float:
    """The narrow network's expected test Dice gain over the full width when the full width gets
    ``full_steps`` steps: the trials' gains weighted by a Gaussian kernel in log steps; beyond the
    trials' range it is the nearest trials' value."""
    if not trials:
        return 0.0
    x = math.log(max(full_steps, 1.0))
    weights = [math.exp(-0.5 * ((x - math.log(t.full_steps)) / KERNEL_LOG_WIDTH) ** 2) for t in trials]
    total = sum(weights)
    if total < 1e-12:  # far outside every trial: the nearest one decides
        nearest = min(trials, key=lambda t: abs(x - math.log(t.full_steps)))
        return nearest.gain
    return sum(w * t.gain for w, t in zip(weights, trials)) / total


def full_width_wins(full_steps: float, trials=WIDTH_TRIALS) -> tuple[bool, str]:
    """``(keep the full width, why)`` for a budget in which the full width gets ``full_steps`` steps."""
    gain = expected_narrow_gain(full_steps, trials)
    near = sorted(trials, key=lambda t: abs(math.log(max(full_steps, 1.0)) - math.log(t.full_steps)))[:2]
    cited = "; ".join(
        f"{t.dataset} {t.budget_min:g} min: {t.full_steps} vs {t.narrow_steps} steps, Dice {t.full_dice:.3f} vs "
        f"{t.narrow_dice:.3f}"
        for t in near
    )
    why = (
        f"measured width trials expect the half width {gain:+.3f} Dice at ~{int(full_steps)} full-width steps ({cited})"
    )
    return gain <= TIE_DICE, why


def crossover_steps(trials=WIDTH_TRIALS, lo: int = 10, hi: int = 100_000) -> int | None:
    """The fewest full-width steps from which the full width is kept (``None``: never in
    ``lo..hi``); for the record (``biomedseg plan`` and the docs quote it)."""
    steps = lo
    while steps <= hi:
        if full_width_wins(steps, trials)[0] and all(
            full_width_wins(s, trials)[0] for s in (steps * 1.25, steps * 1.5, steps * 2)
        ):
            return steps
        steps = int(steps * 1.05) + 1
    return None
