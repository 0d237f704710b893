"""Optional progress bars on stderr for the long data passes (audit, tiling)."""

from __future__ import annotations

import sys


class ProgressBar:
    """A ``tqdm`` bar on stderr, or nothing when disabled, ``total`` is 0 or tqdm is missing.

    Args:
        enabled: draw the bar at all.
        total: number of steps (files, tiles, pairs).
        desc: text in front of the bar.
        unit: name of one step.
        dynamic_ncols: follow the terminal width.
    """

    def __init__(self, enabled: bool, total: int, desc: str, unit: str = "file", dynamic_ncols: bool = True) -> None:
        self.bar = None
        if enabled and total > 0:
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total,
                    desc=desc,
                    unit=unit,
                    leave=False,
                    file=sys.stderr,
                    mininterval=0.5,
                    dynamic_ncols=dynamic_ncols,
                )
            except ImportError:  # pragma: no cover
                self.bar = None

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
