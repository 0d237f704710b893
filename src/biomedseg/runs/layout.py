"""The names of the files in a run folder: the only place they are spelled.

::

    RUN/run.json            kind, run-format version, created, biomedseg version
    RUN/config.yaml         fully resolved training config
    RUN/plan.yaml           what was chosen automatically, and why
    RUN/dataset.json        classes, palette, normalisation statistics, the split used
    RUN/checkpoints/        best.pt, last.pt (state dicts; ``weights_only=True``)
    RUN/metrics.csv         one row per epoch; RUN/curves.png; RUN/tensorboard/
    RUN/postprocess.yaml    tuned post-processing (when tuned)
    RUN/ddp.json            DDP runs: world size and per-rank checksums
    RUN/trust.json          what the model was trained on, for out-of-distribution warnings
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the run-folder format this version writes; folders of a newer format are refused
RUN_FORMAT_VERSION = 1
#: checkpoints a run keeps: the best by validation score, and the latest (for --resume)
CHECKPOINT_NAMES = ("best", "last")

RUN_JSON = "run.json"
CONFIG = "config.yaml"
PLAN = "plan.yaml"
DATASET = "dataset.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.csv"
CURVES = "curves.png"
TENSORBOARD = "tensorboard"
POSTPROCESS = "postprocess.yaml"
DDP = "ddp.json"
TRUST = "trust.json"


@dataclass(frozen=True)
class RunPaths:
    """Paths of the files of the run folder ``root`` (nothing is read or created)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    run_json = property(lambda self: self.root / RUN_JSON)
    config = property(lambda self: self.root / CONFIG)
    plan = property(lambda self: self.root / PLAN)
    dataset = property(lambda self: self.root / DATASET)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    metrics = property(lambda self: self.root / METRICS)
    curves = property(lambda self: self.root / CURVES)
    tensorboard = property(lambda self: self.root / TENSORBOARD)
    postprocess = property(lambda self: self.root / POSTPROCESS)
    ddp = property(lambda self: self.root / DDP)
    trust = property(lambda self: self.root / TRUST)

    def checkpoint(self, name: str) -> Path:
        """``RUN/checkpoints/<name>.pt`` for ``name`` in :data:`CHECKPOINT_NAMES`."""
        if name not in CHECKPOINT_NAMES:
            raise ValueError(f"checkpoint {name!r}: expected one of {CHECKPOINT_NAMES}")
        return self.checkpoints / f"{name}.pt"
