"""Tile grid and Gaussian-weighted blending of tile logits, one band of rows at a time.

The grid, padding and weights are those of the in-memory
:class:`~biomedseg.engine.sliding_window.SlidingWindowPredictor` (MONAI's): the image is
reflect-padded to at least one tile, tiles start at :func:`tile_starts`, and tile logits are
averaged with MONAI's Gaussian importance map. :class:`BandAccumulator` holds only ``K x tile x
width`` accumulated logits and weights; rows no later tile touches are finalised (softmax) and
handed on at once, so memory is independent of the image height.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from biomedseg.engine.sliding_window import pad_before_after, probabilities_of, tile_starts

__all__ = ["BandAccumulator", "TileGrid", "argmax0"]

#: logit given to pixels covered only by skipped tiles: the blank class wins, softmax saturates
_BLANK_LOGIT = 30.0


@dataclass(frozen=True)
class TileGrid:
    """Tile positions over an ``(height, width)`` image padded to at least one tile.

    ``pad`` is ``(top, bottom, left, right)``; ``ys`` / ``xs`` are tile starts in padded
    coordinates.
    """

    height: int
    width: int
    tile: int
    pad: tuple[int, int, int, int]
    ys: list[int]
    xs: list[int]

    @classmethod
    def for_image(cls, shape: tuple[int, int], tile: int, overlap: float) -> "TileGrid":
        """The sliding-window grid of an ``(H, W)`` image with square tiles of side ``tile``."""
        h, w = shape
        pt, pb = pad_before_after(h, tile)
        pl, pr = pad_before_after(w, tile)
        ys = tile_starts(h + pt + pb, tile, overlap)
        xs = tile_starts(w + pl + pr, tile, overlap)
        return cls(h, w, tile, (pt, pb, pl, pr), ys, xs)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(Hp, Wp)``: the image size after padding."""
        pt, pb, pl, pr = self.pad
        return self.height + pt + pb, self.width + pl + pr

    @property
    def n_tiles(self) -> int:
        """Number of tiles in the grid."""
        return len(self.ys) * len(self.xs)


def argmax0(p: torch.Tensor) -> torch.Tensor:
    """``p.argmax(0)`` as ``uint8`` (first maximum wins), by a running maximum over the classes:
    elementwise passes instead of torch's slow strided reduction over the leading axis (10x)."""
    idx = torch.zeros(p.shape[1:], dtype=torch.uint8, device=p.device)
    best = p[0]
    for k in range(1, p.shape[0]):
        better = p[k] > best
        idx.masked_fill_(better, k)
        best = torch.maximum(best, p[k])
    return idx


class BandAccumulator:
    """Weighted sum of tile logits over one band of ``tile`` padded rows.

    Tiles must be added in row-major order (non-decreasing ``y``). Finished rows are passed to
    ``on_rows(y0, proba)`` top to bottom, in image coordinates, with ``proba`` a
    ``(K, n, W) float32`` CPU tensor of softmax probabilities. ``on_start((H, W), K)`` is called
    when the number of classes is known (first tile, or :meth:`allocate`).

    ``fill_empty``: pixels with no weight (covered only by skipped tiles) get probability ~1 for
    ``blank_class`` instead of 0/0. ``to_proba``: blended logits ``(K', n, W)`` -> probabilities
    ``(K, n, W)`` (default: softmax; an ensemble's stacked member logits: see
    :func:`~biomedseg.engine.sliding_window.probabilities_of`).
    """

    def __init__(
        self,
        grid: TileGrid,
        weights: torch.Tensor,
        device: torch.device,
        on_rows: Callable,
        on_start: Callable | None = None,
        fill_empty: bool = False,
        blank_class: int = 0,
        to_proba: Callable | None = None,
    ):
        self.to_proba = to_proba or probabilities_of(None)
        self.n_out = 0  # classes of the probabilities (known once allocated)
        self.grid = grid
        self.weights = weights  # (tile, tile) float32 importance map
        self.device = device
        self.on_rows = on_rows
        self.on_start = on_start
        self.fill_empty = fill_empty
        self.blank_class = blank_class
        self.acc: torch.Tensor | None = None  # (K, tile, Wp) weighted logits
        self.wsum: torch.Tensor | None = None  # (1, tile, Wp) summed weights
        self.base = 0  # padded row of acc[:, 0]

    @property
    def allocated(self) -> bool:
        """Whether the band buffers exist (the number of classes is known)."""
        return self.acc is not None

    def allocate(self, n_classes: int) -> None:
        """Create the band buffers for ``n_classes`` and call ``on_start``."""
        R, Wp = self.grid.tile, self.grid.padded_shape[1]
        self.acc = torch.zeros((n_classes, R, Wp), dtype=torch.float32, device=self.device)
        self.wsum = torch.zeros((1, R, Wp), dtype=torch.float32, device=self.device)
        self.n_out = int(self.to_proba(torch.zeros((n_classes, 1, 1))).shape[0])
        if self.on_start is not None:
            self.on_start((self.grid.height, self.grid.width), self.n_out)

    def add(self, y: int, x: int, logits: torch.Tensor) -> None:
        """Add the ``(K, tile, tile)`` logits of the tile at padded ``(y, x)``; rows above ``y``
        are finished and emitted first."""
        if self.acc is None:
            self.allocate(logits.shape[0])
        if y > self.base:
            self.emit(y - self.base)
        R = self.grid.tile
        self.acc[:, :, x : x + R] += logits * self.weights
        self.wsum[:, :, x : x + R] += self.weights

    def finish(self) -> None:
        """Emit every remaining row (call after the last tile; needs :meth:`allocate` if no tile)."""
        self.emit(self.grid.padded_shape[0] - self.base)

    def emit(self, n: int) -> None:
        """Finalise the next ``n`` padded rows, at most one band at a time."""
        R = self.grid.tile
        while n > 0:
            m = min(n, R)
            self._emit_chunk(m)
            n -= m

    def _emit_chunk(self, m: int) -> None:
        """Finalise padded rows ``[base, base + m)`` (``m <= tile``) and shift the band up by m."""
        pt, _, pl, _ = self.grid.pad
        H, W = self.grid.height, self.grid.width
        lo, hi = max(self.base, pt), min(self.base + m, pt + H)
        if hi > lo:
            a = self.acc[:, lo - self.base : hi - self.base, pl : pl + W]
            w = self.wsum[:, lo - self.base : hi - self.base, pl : pl + W]
            logits = self._blend(a, w)
            self.on_rows(lo - pt, self.to_proba(logits).float().cpu())
        self._shift(m)
        self.base += m

    def _blend(self, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Weighted-mean logits ``a / w``; weightless pixels (``fill_empty``) -> the blank class."""
        if not self.fill_empty:
            return a / w
        empty = w <= 0
        logits = a / torch.where(empty, torch.ones_like(w), w)
        if bool(empty.any()):
            fill = torch.full((a.shape[0], 1, 1), -_BLANK_LOGIT, device=a.device)
            fill[min(self.blank_class, self.n_out - 1) :: self.n_out] = _BLANK_LOGIT  # each member's blank class
            logits = torch.where(empty, fill, logits)
        return logits

    def _shift(self, m: int) -> None:
        """Drop the top ``m`` rows of the band; zero rows enter at the bottom."""
        R = self.grid.tile
        if m >= R:
            self.acc.zero_()
            self.wsum.zero_()
        else:
            self.acc[:, : R - m] = self.acc[:, m:].clone()
            self.acc[:, R - m :] = 0
            self.wsum[:, : R - m] = self.wsum[:, m:].clone()
            self.wsum[:, R - m :] = 0
