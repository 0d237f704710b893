"""Checkpoints: plain dicts of tensors and Python scalars, loadable with ``weights_only=True``.

``save_checkpoint`` writes to a temporary file in the same folder and renames it, so a crash
never leaves a half-written ``best.pt``/``last.pt``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from biomedseg.errors import UserError


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomically write ``state`` (model/optimiser state dicts, counters, RNG states)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: no arbitrary code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise UserError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
