"""Open, create and read run folders: :func:`open_run`, :func:`create_run`, :class:`RunFolder`.

Every other module asks a :class:`RunFolder` for a file's path or content instead of spelling
the file names (see :mod:`biomedseg.runs.layout`).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from biomedseg.core.errors import UserError
from biomedseg.io.writers import write_json, write_text
from biomedseg.runs.layout import RUN_FORMAT_VERSION, RunPaths
from biomedseg.runs.records import DatasetInfo, RunInfo, RunKind, read_plan, validated


class RunFolder:
    """A run folder on disk; ``paths`` names its files, the methods read and write them."""

    def __init__(self, root):
        self.paths = RunPaths(Path(root))
        self._info: RunInfo | None = None  # run.json, read once

    @property
    def root(self) -> Path:
        return self.paths.root

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # ------------------------------------------------------------------ reading
    def info(self) -> RunInfo:
        """``run.json``, or format 1 of kind ``run`` for runs written before it existed; read once
        per :class:`RunFolder` once it exists (``write_info`` replaces it)."""
        if self._info is None:
            if not self.paths.run_json.is_file():
                return RunInfo(format_version=1)
            self._info = validated(RunInfo, _read_json(self.paths.run_json), self.paths.run_json)
        return self._info

    def config_values(self) -> dict:
        """The resolved training config as plain values (``config.yaml``)."""
        path = self.paths.config
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a mapping of option: value")
        return values

    def dataset(self) -> DatasetInfo:
        """Classes, palette, normalisation and split of the training data (``dataset.json``)."""
        return validated(DatasetInfo, _read_json(self.paths.dataset), self.paths.dataset)

    def plan(self) -> dict[str, dict]:
        """The automatic choices (``plan.yaml``); empty when the run has none."""
        return read_plan(self.paths.plan) if self.paths.plan.is_file() else {}

    def has_checkpoint(self, name: str = "last") -> bool:
        return self.paths.checkpoint(name).is_file()

    def checkpoint_path(self, name: str = "best") -> Path:
        """``checkpoints/<name>.pt``; ``best`` falls back to ``last`` when no best was written."""
        path = self.paths.checkpoint(name)
        if not path.is_file() and name == "best":
            return self.paths.checkpoint("last")
        return path

    # ------------------------------------------------------------------ writing
    def write_info(self, info: RunInfo) -> None:
        write_json(self.paths.run_json, info.model_dump(mode="json"))
        self._info = info

    def write_config(self, yaml_text: str) -> None:
        write_text(self.paths.config, yaml_text)

    def write_dataset(self, info: DatasetInfo) -> None:
        write_json(self.paths.dataset, info.model_dump(mode="json"))

    def write_plan(self, plan: dict) -> None:
        write_text(self.paths.plan, yaml.safe_dump(plan, sort_keys=False))

    def write_ddp_report(self, report: dict) -> None:
        write_json(self.paths.ddp, report)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None


def open_run(path, kind: RunKind | None = None) -> RunFolder:
    """The run folder at ``path``, checked: a one-line :class:`UserError` for a folder that is not a
    run (no ``config.yaml``/``dataset.json``), one of a newer format, or not of ``kind``."""
    run = RunFolder(path)
    if not run.root.is_dir():
        raise UserError(f"{run.root}: no such run folder")
    info = run.info()
    if info.format_version > RUN_FORMAT_VERSION:
        raise UserError(
            f"{run.root}: run folder of format {info.format_version}, newer than this biomedseg "
            f"reads ({RUN_FORMAT_VERSION}); upgrade biomedseg"
        )
    if kind is not None and info.kind != kind:
        raise UserError(f"{run.root}: a {info.kind} folder, not a {kind}")
    for path_ in (run.paths.config, run.paths.dataset):
        if not path_.is_file() and info.kind == "cv":
            raise UserError(
                f"{run.root}: a cross-validation folder whose folds are not all finished (no {path_.name}); "
                "run `biomedseg cv` again to finish them"
            )
        if not path_.is_file():
            raise UserError(f"{run.root}: not a biomedseg run folder (no {path_.name})")
    return run


def create_run(path, resume: bool = False) -> RunFolder:
    """The run folder that ``train`` writes: refused when it already holds a run (unless ``resume``),
    or when ``resume`` finds nothing to resume. Nothing is created here (only rank 0 writes)."""
    run = RunFolder(path)
    has_last = run.has_checkpoint("last")
    if resume and not has_last:
        raise UserError(f"{run.root}: nothing to resume (no {run.paths.checkpoint('last').relative_to(run.root)})")
    if not resume and has_last:
        raise UserError(f"{run.root}: already holds a run; use --resume to continue it or choose another --out")
    if resume:
        open_run(run.root)  # a newer format is refused before anything is overwritten
    return run


def write_run(root, config: dict, info: DatasetInfo, state: dict) -> RunFolder:
    """A run folder from parts made outside ``train`` (a config mapping, the dataset info, a checkpoint
    state with at least ``{"model": state_dict}``), saved as ``best``: e.g. a hand-built network."""
    from biomedseg.runs.checkpoints import save_checkpoint

    run = RunFolder(root)
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_info(RunInfo.new("run"))
    run.write_config(yaml.safe_dump(config, sort_keys=False))
    run.write_dataset(info)
    save_checkpoint(run.paths.checkpoint("best"), state)
    return run
