"""The sweep folder written by ``biomedseg sweep``: the only place its file names are spelled.

::

    SWEEP/run.json          kind "sweep" (see :class:`~biomedseg.runs.RunInfo`)
    SWEEP/study.db          the Optuna study (SQLite; --storage may put it elsewhere)
    SWEEP/plan.yaml         the plan made once and shared by every trial
    SWEEP/trial_NNN/        one ordinary run folder per trial (NNN: the trial number)
    SWEEP/evals/trial_NNN/  with --test: `biomedseg evaluate` of the trial on the test split
    SWEEP/table.md, .csv    one row per trial, best validation Dice first
    SWEEP/best_config.yaml  the best trial's resolved config, for ``train --config``
"""

from __future__ import annotations

from pathlib import Path

from biomedseg.core.errors import UserError
from biomedseg.runs.folder import RunFolder
from biomedseg.runs.layout import PLAN, RUN_JSON
from biomedseg.runs.records import RunInfo

STUDY_DB = "study.db"
TRIAL_PREFIX = "trial_"
EVALS = "evals"
TABLE_MD = "table.md"
TABLE_CSV = "table.csv"
BEST_CONFIG = "best_config.yaml"


class SweepPaths:
    """Paths of the files of the sweep folder ``root`` (nothing is read or created)."""

    def __init__(self, root):
        self.root = Path(root)
        self.run_json, self.study_db, self.plan = (self.root / n for n in (RUN_JSON, STUDY_DB, PLAN))
        self.table_md, self.table_csv = self.root / TABLE_MD, self.root / TABLE_CSV
        self.best_config = self.root / BEST_CONFIG

    @staticmethod
    def trial_name(number: int) -> str:
        return f"{TRIAL_PREFIX}{number:03d}"

    def trial(self, number: int) -> Path:
        """``SWEEP/trial_NNN``: the run folder of trial ``number``."""
        return self.root / self.trial_name(number)

    def evaluation(self, number: int) -> Path:
        """``SWEEP/evals/trial_NNN``: the test-split evaluation of trial ``number``."""
        return self.root / EVALS / self.trial_name(number)

    def storage_url(self) -> str:
        """``sqlite:///SWEEP/study.db`` (absolute)."""
        return f"sqlite:///{self.study_db.resolve()}"


def create_sweep(root) -> SweepPaths:
    """Make (or reopen) the sweep folder ``root``, marked ``kind: sweep`` in ``run.json``; a run
    folder of another kind is refused."""
    paths = SweepPaths(root)
    folder = RunFolder(paths.root)
    if paths.run_json.is_file():
        kind = folder.info().kind
        if kind != "sweep":
            raise UserError(f"{paths.root}: a {kind} folder, not a sweep; choose another --out")
        return paths
    if folder.paths.config.is_file():
        raise UserError(f"{paths.root}: holds a training run; choose another --out")
    paths.root.mkdir(parents=True, exist_ok=True)
    folder.write_info(RunInfo.new("sweep"))
    return paths
