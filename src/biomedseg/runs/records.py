"""Typed records of what the files of a run folder hold (pydantic models).

``RunInfo`` is ``run.json``; ``DatasetInfo`` is ``dataset.json``; ``PlanEntry`` is one entry of
``plan.yaml`` (``option: {value, reason}``). Unknown keys are kept (``extra="allow"``), so a run
written by a newer minor version with more fields still opens.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from biomedseg.core.errors import UserError
from biomedseg.runs.layout import RUN_FORMAT_VERSION

RunKind = Literal["run", "cv", "ensemble", "sweep"]


class RunInfo(BaseModel):
    """``RUN/run.json``: what kind of folder this is and which format it is written in.

    Runs written before ``run.json`` existed have none: they read as format 1, kind ``run``.
    """

    model_config = ConfigDict(extra="allow")

    kind: RunKind = "run"
    format_version: int = RUN_FORMAT_VERSION
    created: str | None = None
    biomedseg_version: str | None = None
    # the run this one started from (train --init): run name, path, origin, checkpoint, its sha256
    parent: dict | None = None

    @classmethod
    def new(cls, kind: RunKind = "run", parent: dict | None = None) -> "RunInfo":
        from biomedseg import __version__

        return cls(
            kind=kind,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            biomedseg_version=__version__,
            parent=parent,
        )


class DatasetInfo(BaseModel):
    """``RUN/dataset.json``: everything prediction needs to know about the training data.

    ``palette``: :meth:`biomedseg.io.masks.Palette.to_json`; ``normalization``:
    :meth:`biomedseg.transforms.normalize.Normalizer.to_json`; ``split``: ``{name: [ids]}``.
    """

    model_config = ConfigDict(extra="allow")

    classes: list[str]
    background: int | None = None
    palette: dict
    strict_index: bool = False
    channels: int
    n_classes: int
    normalization: dict
    split: dict[str, list[str]] = {}
    source: str | None = None
    class_pixel_counts: list[int] | None = None
    class_weights: list[float] | None = None


class PlanEntry(BaseModel):
    """One automatic choice of ``plan.yaml``: the value and why it was chosen."""

    model_config = ConfigDict(extra="allow")

    value: Any
    reason: str = ""


def validated(model: type[BaseModel], data: Any, path: Path) -> BaseModel:
    """``model(**data)``, or a one-line :class:`UserError` naming ``path`` and the bad field."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping, found {type(data).__name__}")
    try:
        return model(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "?"
        raise UserError(f"{path}: field {loc!r}: {err['msg']}") from None


def read_plan(path) -> dict[str, dict]:
    """The ``option: {value, reason}`` entries of a ``plan.yaml``, each checked as a :class:`PlanEntry`.

    Other keys (the fingerprint, the budget) are skipped.
    """
    p = Path(path)
    data = read_yaml_mapping(p, "plan file", "not a plan (expected option: {value, reason} entries)")
    return {k: validated(PlanEntry, v, p).model_dump() for k, v in data.items() if isinstance(v, dict) and "value" in v}


def read_yaml_mapping(path, kind: str, not_mapping: str) -> dict:
    """The mapping in the YAML file ``path`` (``{}`` when empty); one-line :class:`UserError` for a
    missing file (``"<path>: <kind> not found"``), invalid YAML, or anything but a mapping."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {kind} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: {not_mapping}")
    return data
