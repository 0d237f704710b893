"""Command line: ``biomedseg COMMAND ...``.

Only parses arguments and calls one library function per command; torch and MONAI are imported
inside the commands so ``biomedseg --help`` answers at once. A :class:`UserError` is printed as
one line and exits with code 2, and so is an ``OSError`` (a full disk, a read-only folder), naming
the file; every command that writes checks its output location before it starts.
"""

from __future__ import annotations

import sys

import typer

# the command modules register their commands on ``app`` when imported (in the order of --help)
from biomedseg.cli import (
    compare_commands,  # noqa: F401
    data_commands,  # noqa: F401, I001
    run_commands,  # noqa: F401
    train_commands,  # noqa: F401
    trust_commands,  # noqa: F401
)
from biomedseg.cli.app import _setup_logging, app
from biomedseg.core.errors import UserError


def main() -> None:
    """Console-script entry point: user errors -> one line on stderr, exit code 2.

    Typer runs in standalone mode, so usage errors (a missing argument, an unknown option) are
    printed by it with exit code 2 as well.
    """
    _setup_logging()
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk, a read-only file system, permissions: the file and the reason
        typer.echo(f"error: {exc.filename}: {exc.strerror or exc}" if exc.filename else f"error: {exc}", err=True)
        sys.exit(2)
