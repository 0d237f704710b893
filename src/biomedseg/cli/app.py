"""The Typer application and what every command shares: common options, range checks, logging."""

from __future__ import annotations

import logging
import math
import sys

import typer

from biomedseg.core.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Semantic segmentation of 2D biomedical images: audit, train, evaluate, predict.",
)

DataArg = typer.Argument(None, help="DATA folder with images/ and masks/ (and optional dataset.json)")
ImagesOpt = typer.Option(None, "--images", help="image folder (instead of DATA)")
MasksOpt = typer.Option(None, "--masks", help="mask folder (instead of DATA)")
SchedulerOpt = typer.Option(
    None,
    "--scheduler",
    help="run the jobs on a Dask cluster: tcp://host:port, a "
    "scheduler file, or local[:N] (N local worker processes); needs biomedseg[distributed]",
)


def _within(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False, **options) -> None:
    """Refuse (one line, exit 2, before any work) an option outside ``[low, high]`` (``*_open``:
    the bound itself excluded), NaN included; options left unset (None) pass."""
    for name, value in options.items():
        if value is None or (
            (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        ):
            continue
        bounds = (">" if low_open else ">=") + f" {low:g}"
        if high != math.inf:
            bounds += (" and <" if high_open else " and <=") + f" {high:g}"
        raise UserError(f"--{name.replace('_', '-')} {value}: must be {bounds}")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("biomedseg").setLevel(logging.DEBUG if verbose else logging.INFO)
