"""Errors meant for users.

Everything raised as :class:`UserError` is a problem with the user's input (a missing
folder, a corrupt file, an unknown option). The command line prints it as one line and
exits with code 2; any other exception is a bug and shows a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line (exit code 2).

    The message should name the file (or option) and the problem, e.g.
    ``"data/masks/3.png: mask is 512x500 but its image is 512x512"``.
    """

    exit_code = 2


def file_error(path, problem: str) -> UserError:
    """Build a :class:`UserError` of the form ``"<path>: <problem>"``."""
    return UserError(f"{path}: {problem}")
