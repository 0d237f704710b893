"""The planner's width rule follows measured width trials (issue 27: plans that fit the CPU)."""

from __future__ import annotations

from biomedseg.planning.planner import make_plan
from biomedseg.planning.width_curves import (
    TIE_DICE,
    WIDTH_TRIALS,
    WidthTrial,
    crossover_steps,
    expected_narrow_gain,
    full_width_wins,
)
from test_planner import FP


def _trial(full_steps: int, gain: float) -> WidthTrial:
    return WidthTrial("d", "cpu", 15, full_steps, int(2.6 * full_steps), 0.7, 0.7 + gain, "test")


def test_expected_gain_is_each_trials_gain_near_it_and_smooth_between():
    trials = (_trial(100, 0.08), _trial(3000, -0.01))
    assert abs(expected_narrow_gain(100, trials) - 0.08) < 1e-6
    assert abs(expected_narrow_gain(3000, trials) + 0.01) < 1e-6
    assert abs(expected_narrow_gain(10, trials) - 0.08) < 1e-6  # beyond the range: the nearest trial
    assert abs(expected_narrow_gain(10**6, trials) + 0.01) < 1e-6
    mid = expected_narrow_gain(550, trials)  # log-midway: between the two
    assert -0.01 < mid < 0.08


def test_a_new_trial_moves_the_crossover_without_editing_a_threshold():
    base = (_trial(100, 0.08), _trial(3000, -0.01))
    before = crossover_steps(base)
    after = crossover_steps(base + (_trial(1500, 0.05),))  # the narrow net still wins at 1500 steps
    assert before is not None and after is not None and after > before
    assert full_width_wins(before, base)[0] and not full_width_wins(before // 2, base)[0]


def test_shipped_trials_keep_full_width_only_with_enough_steps():
    crossover = crossover_steps()
    assert crossover is not None and 431 < crossover < 2283  # between the measured win and the tie
    assert not full_width_wins(431)[0]  # the breast-ultrasound trial: width 16 won by 0.076
    keep, why = full_width_wins(2 * crossover)
    assert keep and "dsb2018_nuclei" in why  # the reason cites the nearest trials
    for t in WIDTH_TRIALS:  # each trial's verdict is what its own numbers say (tie -> full width)
        assert full_width_wins(t.full_steps, (t,))[0] == (t.gain <= TIE_DICE)


def test_plan_on_a_slow_cpu_is_narrow_and_on_a_fast_cpu_full_width():
    budget = 15 * 60
    # seconds per step of the default U-Net (8 x 256², width 32): a 2-core AVX2 CPU ~1.15-1.8 s,
    # a bf16 or many-core CPU ~0.3 s; width 16 ~2.6x cheaper
    for t32, expected in [(1.8, 16), (1.15, 16), (0.3, 32)]:
        plan = make_plan(FP, budget, "cpu", step_time=lambda p, b, d, w, t32=t32: t32 * (w / 32) ** 1.4)
        entry = plan["model_kwargs.base_channels"]
        assert entry["value"] == expected, entry["reason"]
        assert "measured width trials" in entry["reason"]
