"""Defaults of the sliding-window engine, defined once (no torch import: the config reads them)."""

from __future__ import annotations

#: fraction of a tile shared with its neighbour (validation and prediction)
DEFAULT_OVERLAP = 0.25


def inference_batch_size(train_batch_size: int) -> int:
    """Tiles per forward pass at inference, from the training batch size: half of it, at least 1
    (whole-tile batches without gradients; validation and prediction use the same rule)."""
    return max(1, int(train_batch_size) // 2)


#: ``predict --compile``: ``auto`` compiles the network for jobs of many tiles (see below)
COMPILE_MODES = ("auto", "on", "off")
DEFAULT_COMPILE = "auto"
#: ``auto`` compiles when a job runs at least this many tile forwards (tiles x TTA transforms):
#: compiling the 6.5 M-parameter U-Net took ~40 s cold (3-7 s from inductor's cache) and saved
#: 16-23 ms per 256 x 256 tile (fp32-bf16, 1 thread, AMD EPYC): it pays back after ~1700-2500 tiles
COMPILE_MIN_TILES = 2000
