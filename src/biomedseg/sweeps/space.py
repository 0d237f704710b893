"""What a sweep varies: ``--param`` values parsed and checked against the training config.

Three forms, each naming a config option (``model_kwargs.depth`` for a nested one)::

    optimizer=adam,sgd,adamw     a list: the trials pick among the values
    lr=1e-4:1e-1:log             a range, sampled on a log scale
    model_kwargs.depth=3:5       a range of integers (both bounds are integers)

A sweep of lists only is a grid (every combination once); any range makes it a TPE search.
Values are read as numbers where they are numbers, ``true``/``false``/``null`` as YAML, else text.
Nothing here imports Optuna: :meth:`Param.suggest` calls the ``trial.suggest_*`` methods it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from biomedseg.core.errors import UserError
from biomedseg.runs.config import TrainConfig, build_config, merge

PARAM_FORMS = "NAME=a,b,c (a list), NAME=LOW:HIGH or NAME=LOW:HIGH:log (a range)"
LOG = "log"


@dataclass(frozen=True)
class Param:
    """One swept option: ``choices`` (a list) or ``low``..``high`` (a range, ``log`` scale or not)."""

    name: str
    choices: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        return self.choices is None

    @property
    def is_int(self) -> bool:
        return self.is_range and isinstance(self.low, int) and isinstance(self.high, int)

    def spec(self) -> str:
        """The canonical ``--param`` text (stored with the study, so a resumed sweep is checked)."""
        if not self.is_range:
            return f"{self.name}={','.join(_text(v) for v in self.choices)}"
        return f"{self.name}={_text(self.low)}:{_text(self.high)}" + (f":{LOG}" if self.log else "")

    def suggest(self, trial) -> Any:
        """The trial's value (``trial``: an ``optuna.Trial``, or anything with its ``suggest_*``)."""
        if not self.is_range:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def overrides(self, value: Any) -> dict:
        """``{"model_kwargs": {"depth": 4}}`` for ``model_kwargs.depth`` = 4: a config layer."""
        out: dict = {}
        node = out
        parts = self.name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        return out

    def probes(self) -> list:
        """Values that must all be valid settings: every choice, or both bounds (and a middle)."""
        if not self.is_range:
            return list(self.choices)
        return [self.low, self.high] if self.is_int else [self.low, (self.low + self.high) / 2, self.high]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return yaml.safe_dump(value).split("\n")[0] if value is None or isinstance(value, bool) else str(value)


def _scalar(text: str) -> Any:
    """``"3"`` -> 3, ``"1e-4"`` -> 0.0001, ``"true"`` -> True, ``"null"`` -> None, else the text."""
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is int or math.isfinite(value):
            return value
    loaded = yaml.safe_load(text) if text.lower() in ("true", "false", "null", "~") else text
    return loaded


def _number(text: str, where: str) -> int | float:
    value = _scalar(text.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"--param {where}: range bound {text.strip()!r} is not a number")
    return value


def _check_name(name: str, where: str) -> None:
    head, _, rest = name.partition(".")
    fields = TrainConfig.model_fields
    if not name or head not in fields:
        raise UserError(f"--param {where}: {head or name!r} is not a training option (see `biomedseg train --help`)")
    if rest and fields[head].annotation != dict[str, Any]:
        raise UserError(f"--param {where}: {head!r} has no sub-options (only model_kwargs.NAME does)")


def parse_param(text: str) -> Param:
    """One ``--param`` text as a :class:`Param`; a malformed one is a one-line :class:`UserError`."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not value:
        raise UserError(f"--param {text}: expected {PARAM_FORMS}")
    _check_name(name, text)
    if ":" in value:
        parts = value.split(":")
        if "," in value or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != LOG):
            raise UserError(f"--param {text}: expected {PARAM_FORMS}")
        low, high = _number(parts[0], text), _number(parts[1], text)
        log = len(parts) == 3
        if not low < high:
            raise UserError(f"--param {text}: the low bound must be below the high bound")
        if log and low <= 0:
            raise UserError(f"--param {text}: a log range needs a low bound above 0")
        if isinstance(low, int) != isinstance(high, int):
            low, high = float(low), float(high)
        return Param(name, low=low, high=high, log=log)
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise UserError(f"--param {text}: empty value in the list")
    choices = tuple(_scalar(v) for v in items)
    if len(set(map(repr, choices))) != len(choices):
        raise UserError(f"--param {text}: a value is listed twice")
    return Param(name, choices=choices)


def parse_params(texts) -> list[Param]:
    """Every ``--param`` (at least one; each option once)."""
    params = [p if isinstance(p, Param) else parse_param(str(p)) for p in texts or []]
    if not params:
        raise UserError(f"sweep: give at least one --param ({PARAM_FORMS})")
    names = [p.name for p in params]
    for n in names:
        if names.count(n) > 1:
            raise UserError(f"--param {n}: given twice")
    return params


def check_params(params: list[Param], base: dict) -> None:
    """Every value a trial may get is a valid setting on top of ``base`` (the user's options):
    e.g. ``optimizer=adam,adamm`` is refused before any trial trains."""
    for p in params:
        for value in p.probes():
            build_config(merge(base, p.overrides(value)), source=f"--param {p.spec()}")


def grid_of(params: list[Param]) -> dict[str, list] | None:
    """``{name: values}`` when every parameter is a list (a grid sweep), else ``None``."""
    if any(p.is_range for p in params):
        return None
    return {p.name: list(p.choices) for p in params}


def grid_size(params: list[Param]) -> int:
    """Number of combinations of a grid sweep."""
    return math.prod(len(p.choices) for p in params)
