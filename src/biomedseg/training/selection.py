"""Which epoch ``best.pt`` holds: config ``select``.

- ``best`` (the default): the epoch with the highest validation Dice (mean foreground Dice);
- ``smoothed``: the epoch with the highest mean of its own and the previous validation Dice
  values (``SMOOTHING_WINDOW`` in all), so that one lucky score on a handful of validation images
  does not pick the checkpoint;
- ``last``: the latest epoch (``best.pt`` = ``last.pt``).

Without validation images every epoch is the best one, whatever the rule. ``best_score`` (saved
in the checkpoints, printed at the end) is the rule's score of the chosen epoch.
"""

from __future__ import annotations

#: validations averaged by ``select: smoothed`` (the latest and the ones before it)
SMOOTHING_WINDOW = 3


def selection_score(scores: list[float], rule: str) -> float:
    """The rule's score of the latest of ``scores`` (validation Dice values, oldest first)."""
    recent = scores[-SMOOTHING_WINDOW:] if rule == "smoothed" else scores[-1:]
    return sum(recent) / len(recent)


def choose_best(state, rule: str, score: float | None, has_val: bool) -> bool:
    """After an epoch: whether ``best.pt`` gets this epoch (``state.best_score``/``best_epoch`` are
    updated then). ``score``: the epoch's validation Dice, None when it did not validate; it is
    appended to ``state.val_scores``."""
    current = None
    if score is not None:
        state.val_scores.append(score)
        current = selection_score(state.val_scores, rule)
    if has_val and rule != "last" and not (current is not None and current > state.best_score):
        return False
    if current is not None:
        state.best_score = current
    state.best_epoch = state.epoch
    return True
