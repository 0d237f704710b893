"""Defaults of the sliding-window engine, defined once (no torch import: the config reads them)."""

from __future__ import annotations

#: fraction of a tile shared with its neighbour (validation and prediction)
DEFAULT_OVERLAP = 0.25


def inference_batch_size(train_batch_size: int) -> int:
    """Tiles per forward pass at inference, from the training batch size: half of it, at least 1
    (whole-tile batches without gradients; validation and prediction use the same rule)."""
    return max(1, int(train_batch_size) // 2)
