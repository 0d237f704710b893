"""The run folder: its layout, typed records, checkpoints, and opening/creating one.

The only place that knows the names of the files of a run folder (:mod:`~biomedseg.runs.layout`).
``open_run(path)`` checks a folder and returns a :class:`RunFolder`; ``create_run(path)`` is what
``train`` writes into. Later kinds (cross-validation, ensembles) are added here.
"""

from biomedseg.runs.checkpoints import load_checkpoint, save_checkpoint
from biomedseg.runs.folder import RunFolder, create_run, open_run, write_run
from biomedseg.runs.layout import RUN_FORMAT_VERSION, RunPaths
from biomedseg.runs.records import DatasetInfo, PlanEntry, RunInfo, read_plan

__all__ = [
    "RUN_FORMAT_VERSION",
    "DatasetInfo",
    "PlanEntry",
    "RunFolder",
    "RunInfo",
    "RunPaths",
    "create_run",
    "load_checkpoint",
    "open_run",
    "read_plan",
    "save_checkpoint",
    "write_run",
]
