"""Checkpoints (``RUN/checkpoints/*.pt``): plain dicts of tensors and Python scalars.

torch is imported inside the functions, so that importing :mod:`biomedseg.runs` stays light.

They load with ``weights_only=True`` (no code from the file runs). ``save_checkpoint`` writes a
temporary file in the same folder and renames it, so a crash never leaves a half-written
``best.pt``/``last.pt``.
"""

from __future__ import annotations

from pathlib import Path

from biomedseg.core.errors import UserError
from biomedseg.io.writers import atomic_path


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomically write ``state`` (model/optimiser state dicts, counters, RNG states)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: no arbitrary code from the file)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise UserError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {first})") from None
