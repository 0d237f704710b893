"""One run, or a k-fold cross-validation ensemble, for a training budget.

A k-fold CV ensemble (``biomedseg cv``) splits the budget into k runs of a k-th each. Its members
see more data between them (the validation images too) and their average is smoother than one
model, but each is trained k times shorter. Measured at 30 CPU minutes (``benchmarks/cv_ensemble.py``,
``benchmarks/RESULTS.md``): folds of 940-1,590 steps against single runs of 2,640-9,060 steps,
the 5-fold ensemble *lost* on all three datasets tried (monuseg -0.012 image Dice, 95% CI -0.020 to
-0.006; darkfield -0.006 and dsb2018 -0.006, both intervals containing 0). The single runs'
validation curves say why: dsb2018 rose 0.922 -> 0.934 from 1,500 to 5,200 steps and only +0.002
in the 3,900 steps after; darkfield was still rising steeply at 2,600. Each fold evaluated alone on
the test images says by how much: the single run beat the mean member by 0.022 (monuseg), 0.051
(darkfield) and 0.010 (dsb2018) pooled Dice, and averaging the members won back 0.012, 0.048 and
0.002: less than the shorter training lost, most where the members disagree most (darkfield's
ranged 0.67-0.76). So members should reach the flat part of the curve first:
:data:`MIN_STEPS_PER_FOLD` steps each. That threshold is a bound read from those curves, not a
measured crossover (a 5x longer benchmark did not fit the session that wrote this).
"""

from __future__ import annotations

from biomedseg.data.folds import DEFAULT_FOLDS

#: training steps each fold should get before a k-fold CV ensemble is expected to beat one run of
#: the whole budget (see the module docstring)
MIN_STEPS_PER_FOLD = 5000


def plan_ensemble(steps: int | None, budget_s: float | None, folds: int = DEFAULT_FOLDS) -> dict:
    """The plan's ``ensemble`` entry for ``steps`` planned training steps in ``budget_s`` seconds:
    ``{"value": "single" | "cv", "reason": ...}`` (the budget a CV ensemble needs, when it is not this one)."""
    if not steps:
        return {
            "value": "single",
            "reason": "one run (steps not estimated; a cross-validation ensemble pays off "
            f"once each of its {folds} folds gets ~{MIN_STEPS_PER_FOLD} steps)",
        }
    per_fold = steps // folds
    if per_fold >= MIN_STEPS_PER_FOLD:
        return {
            "value": "cv",
            "reason": f"{folds} folds would train ~{per_fold} steps each (>= "
            f"{MIN_STEPS_PER_FOLD}): a {folds}-fold CV ensemble (`biomedseg cv`) is expected to beat one "
            "run of this budget",
        }
    need = (
        f"a budget of ~{_duration(budget_s * folds * MIN_STEPS_PER_FOLD / steps)} here"
        if budget_s
        else f"~{folds * MIN_STEPS_PER_FOLD} steps in all"
    )
    return {
        "value": "single",
        "reason": f"one run: {folds} folds would train only ~{per_fold} steps each (< "
        f"{MIN_STEPS_PER_FOLD}, where members are still improving); a {folds}-fold CV ensemble is expected to "
        f"win from {need}",
    }


def fold_advice(steps_per_fold: int | None, budget_per_fold_s: float | None) -> str | None:
    """A warning for a CV whose folds train fewer than :data:`MIN_STEPS_PER_FOLD` steps (``None``: no
    warning, or the steps are not known)."""
    if not steps_per_fold or steps_per_fold >= MIN_STEPS_PER_FOLD:
        return None
    more = (
        f" (--budget-per-fold ~{_duration(budget_per_fold_s * MIN_STEPS_PER_FOLD / steps_per_fold)})"
        if budget_per_fold_s
        else ""
    )
    return (
        f"each fold trains only ~{steps_per_fold} steps: below ~{MIN_STEPS_PER_FOLD} steps per fold{more}, one "
        "`biomedseg train` run of the whole budget is expected to beat this CV ensemble (the CV still gives "
        "honest out-of-fold scores)"
    )


def cv_plan_entry(steps_per_fold: int | None, budget_per_fold_s: float | None) -> dict:
    """The ``ensemble`` entry of a CV's shared plan (planned for one fold's budget)."""
    advice = fold_advice(steps_per_fold, budget_per_fold_s)
    if advice:
        return {"value": "cv", "reason": advice}
    if steps_per_fold:
        return {
            "value": "cv",
            "reason": f"each fold trains ~{steps_per_fold} steps (>= {MIN_STEPS_PER_FOLD}): the CV "
            "ensemble is expected to beat one run of the whole budget",
        }
    return {"value": "cv", "reason": "steps per fold not estimated"}


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
