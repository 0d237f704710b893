"""Polygons of class masks along pixel edges, traced band by band (for GeoJSON outputs).

Coordinates are pixel corners: pixel (row ``r``, column ``c``) is the square
``[c, c + 1] x [r, r + 1]``, so the polygons cover exactly the pixels of the mask and
rasterising them (a pixel is inside when its centre is) gives the mask back. Each
4-connected region of a class is one polygon, its holes kept as interior rings; pixels that
touch only at a corner belong to separate polygons that touch at that corner (the convention
of GDAL's polygonize), which keeps every polygon valid in the OGC sense (a hole may touch its
shell at a point). Exterior rings have a positive signed area and holes a negative one
(counter-clockwise and clockwise as RFC 7946 and shapely read the numbers, y upwards; the other
way round as drawn on the image); vertices are only the corners (collinear steps merged).

:class:`PolygonTracer` takes the mask top to bottom in bands of rows of any height
(:meth:`~PolygonTracer.add_rows`, then :meth:`~PolygonTracer.finish`). Boundary edges are
linked into chains as soon as both ends are known; only the chains that cross the current
band line, and holes waiting for their shell, are held, so an object cut by band boundaries
is still one polygon and memory does not grow with the image height. Each polygon is handed
to a callback when its outer boundary closes. :func:`mask_polygons` traces a whole mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

__all__ = ["PolygonTracer", "mask_polygons"]

#: directions of a boundary step: +x, +y, -x, -y (the interior is on the left of each step
#: in the x-right, y-up reading of the numbers)
_DX = np.array([1, 0, -1, 0], np.int64)
_DY = np.array([0, 1, 0, -1], np.int64)


def _unit_edges(prev: np.ndarray, rows: np.ndarray, y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boundary steps of the True pixels of ``rows`` ``(n, W)`` (image rows ``y0..``) whose
    row above is ``prev`` ``(W,)``: ``(x, y, direction)`` of each step's start. Horizontal steps
    lie on the lines ``y0 .. y0 + n - 1``; vertical steps on the rows' pixel sides."""
    above = np.vstack([prev[None], rows[:-1]])
    blank = np.zeros((rows.shape[0], 1), bool)
    left = np.hstack([blank, rows[:, :-1]])
    right = np.hstack([rows[:, 1:], blank])
    parts = []
    # (where, x offset, y offset, direction): top sides run +x, bottom sides of the row above
    # run -x, left sides -y (from the lower corner), right sides +y
    for where, ox, oy, d in (
        (rows & ~above, 0, 0, 0),
        (above & ~rows, 1, 0, 2),
        (rows & ~left, 0, 1, 3),
        (rows & ~right, 1, 0, 1),
    ):
        r, c = np.nonzero(where)
        parts.append((c + ox, r + y0 + oy, np.full(r.size, d)))
    x, y, d = (np.concatenate([p[i] for p in parts]).astype(np.int64) for i in range(3))
    return x, y, d


@dataclass
class _Chains:
    """Open boundary chains: start/end vertex keys, first/last step direction and the vertex
    keys of each chain (a list of arrays; the end vertex excluded)."""

    start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    last: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    keys: list = field(default_factory=list)


def _successors(start, end, first, last, limit: int) -> np.ndarray:
    """Index of the item that follows each item at its end vertex (-1 where that vertex is not
    complete yet, i.e. its key is >= ``limit``). At a saddle (two ways out) the walk turns left,
    keeping the pixel it goes around: 4-connected regions."""
    order = np.argsort(start, kind="stable")
    starts = start[order]
    lo = np.searchsorted(starts, end, "left")
    n_out = np.searchsorted(starts, end, "right") - lo
    nxt = np.full(start.size, -1, np.int64)
    ok = end < limit
    one = ok & (n_out == 1)
    nxt[one] = order[lo[one]]
    two = np.flatnonzero(ok & (n_out == 2))
    a, b = order[lo[two]], order[lo[two] + 1]
    nxt[two] = np.where(first[a] == (last[two] + 1) % 4, a, b)
    return nxt


def _walks(nxt: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
    """Split the successor graph into open paths (from items nobody precedes) and cycles."""
    nxt_list = nxt.tolist()
    has_pred = np.zeros(nxt.size, bool)
    has_pred[nxt[nxt >= 0]] = True
    seen = [False] * nxt.size
    paths, cycles = [], []
    for i in np.flatnonzero(~has_pred).tolist():
        walk = []
        while i >= 0:
            seen[i] = True
            walk.append(i)
            i = nxt_list[i]
        paths.append(walk)
    for i in range(nxt.size):
        if not seen[i]:
            walk = []
            while not seen[i]:
                seen[i] = True
                walk.append(i)
                i = nxt_list[i]
            cycles.append(walk)
    return paths, cycles


def _gather_keys(walk: list[int], n_old: int, old_keys: list, unit_keys: np.ndarray) -> list[np.ndarray]:
    """Vertex keys along a walk over old chains (items ``< n_old``) and unit steps (the rest)."""
    parts, run = [], []
    for i in walk:
        if i < n_old:
            if run:
                parts.append(unit_keys[np.array(run) - n_old])
                run = []
            parts.extend(old_keys[i])
        else:
            run.append(i)
    if run:
        parts.append(unit_keys[np.array(run) - n_old])
    return parts


@dataclass
class _Ring:
    """Corners of a closed ring, twice its signed area and its bounding box ``(x0, y0, x1, y1)``."""

    x: np.ndarray
    y: np.ndarray
    area2: int
    bbox: tuple[int, int, int, int]

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> "_Ring":
        return cls(x, y, _area2(x, y), (int(x.min()), int(y.min()), int(x.max()), int(y.max())))

    def coords(self) -> np.ndarray:
        return np.stack([self.x, self.y], 1)


def _ring_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For rings stored one after another with ``lengths``: ``(ring id, first index of each ring,
    index of the next vertex, index of the previous vertex)`` of every vertex (cyclic per ring)."""
    first = np.cumsum(lengths) - lengths
    ring = np.repeat(np.arange(lengths.size), lengths)
    idx = np.arange(ring.size)
    last = first[ring] + lengths[ring] - 1
    return ring, first, np.where(idx == last, first[ring], idx + 1), np.where(idx == first[ring], last, idx - 1)


def _corner_rings(parts: list[np.ndarray], stride: int) -> list[_Ring]:
    """Closed vertex-key sequences -> rings of corners (collinear vertices dropped, starting at the
    top-left corner, so a ring is the same however it was traced; a ring through a vertex twice cut
    into simple loops), all rings at once."""
    lengths = np.array([p.size for p in parts])
    keys = np.concatenate(parts)
    x, y = keys % stride, keys // stride
    ring, _, nxt, prv = _ring_positions(lengths)
    step = (x[nxt] - x) * 3 + (y[nxt] - y)
    keep = step != step[prv]
    keys, ring = keys[keep], ring[keep]
    lengths = np.bincount(ring, minlength=lengths.size)
    first = np.cumsum(lengths) - lengths
    order = np.lexsort((keys, ring))  # by ring, then top-left first (keys grow with y, then x)
    top_left = order[first] - first
    rotated = np.empty_like(keys)
    pos = np.arange(keys.size) - first[ring]
    rotated[first[ring] + (pos - top_left[ring]) % lengths[ring]] = keys
    x, y = rotated % stride, rotated // stride
    _, _, nxt, _ = _ring_positions(lengths)
    area2 = np.add.reduceat(x * y[nxt] - x[nxt] * y, first)
    boxes = np.stack(
        [
            np.minimum.reduceat(x, first),
            np.minimum.reduceat(y, first),
            np.maximum.reduceat(x, first),
            np.maximum.reduceat(y, first),
        ],
        1,
    ).tolist()
    sorted_keys, sorted_ring = keys[order], ring[order]
    twice = np.zeros(lengths.size, bool)
    twice[sorted_ring[1:][(sorted_keys[1:] == sorted_keys[:-1]) & (sorted_ring[1:] == sorted_ring[:-1])]] = True
    bounds = np.cumsum(lengths)[:-1]
    rings = []
    for i, (rx, ry) in enumerate(zip(np.split(x, bounds), np.split(y, bounds))):
        if twice[i]:
            rings.extend(_Ring.of(lx, ly) for lx, ly in _simple_loops(rx, ry))
        else:
            rings.append(_Ring(rx, ry, int(area2[i]), tuple(boxes[i])))
    return rings


def _simple_loops(x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut a closed ring that passes a vertex twice (a saddle) into loops that do not."""
    pairs = np.stack([x, y], 1)
    loops, stack, where = [], [], {}
    for p in map(tuple, pairs.tolist()):
        if p in where:
            i = where[p]
            loops.append(stack[i:])
            for q in stack[i + 1 :]:
                del where[q]
            del stack[i + 1 :]
        else:
            where[p] = len(stack)
            stack.append(p)
    loops.append(stack)
    return [(np.array([p[0] for p in lp]), np.array([p[1] for p in lp])) for lp in loops if len(lp) >= 4]


def _area2(x: np.ndarray, y: np.ndarray) -> int:
    """Twice the signed area (positive: counter-clockwise in the x-right, y-up reading)."""
    return int(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _inner_point(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Centre of the pixel on the left of the ring's first step (inside the region it bounds)."""
    sx, sy = int(np.sign(x[1] - x[0])), int(np.sign(y[1] - y[0]))
    return x[0] + 0.5 * sx - 0.5 * sy, y[0] + 0.5 * sy + 0.5 * sx


def _inside(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd test of pixel centres ``(px, py)`` against the rectilinear ring ``(x, y)``:
    count the vertical sides right of each point on its row."""
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    vertical = x == x1
    vx, lo = x[vertical], np.minimum(y, y1)[vertical]
    span = np.maximum(y, y1)[vertical] - lo
    total = int(span.sum())
    rows = np.repeat(lo, span) + np.arange(total) - np.repeat(np.cumsum(span) - span, span)
    stride = int(x.max()) + 2
    keys = np.sort(rows * stride + np.repeat(vx, span))
    r = np.floor(py).astype(np.int64)
    first = np.searchsorted(keys, r * stride + np.ceil(px).astype(np.int64))
    return (np.searchsorted(keys, (r + 1) * stride) - first) % 2 == 1


class _ClassTracer:
    """The tracing state of one class."""

    def __init__(self, width: int, emit: Callable[[np.ndarray, list[np.ndarray]], None]):
        self.width = width
        self.stride = width + 1
        self.emit = emit
        self.prev = np.zeros(width, bool)
        self.chains = _Chains()
        self.holes: list[_Ring] = []  # closed holes waiting for their shell (it closes later)
        self.boxes = np.zeros((0, 4), np.int64)  # their bounding boxes

    def add(self, y0: int, rows: np.ndarray, limit_row: int | None) -> None:
        """Add the boundary steps of ``rows`` and link everything whose vertices are complete
        (rows above ``limit_row``; ``None``: all)."""
        x, y, d = _unit_edges(self.prev, rows, y0)
        self.prev = rows[-1].copy()
        keys = y * self.stride + x
        ends = (y + _DY[d]) * self.stride + x + _DX[d]
        c = self.chains
        start, end = np.concatenate([c.start, keys]), np.concatenate([c.end, ends])
        first, last = np.concatenate([c.first, d]), np.concatenate([c.last, d])
        limit = np.iinfo(np.int64).max if limit_row is None else limit_row * self.stride
        paths, cycles = _walks(_successors(start, end, first, last, limit))
        n_old = c.start.size
        self.chains = _Chains(
            np.array([start[p[0]] for p in paths], np.int64),
            np.array([end[p[-1]] for p in paths], np.int64),
            np.array([first[p[0]] for p in paths], np.int64),
            np.array([last[p[-1]] for p in paths], np.int64),
            [_gather_keys(p, n_old, c.keys, keys) for p in paths],
        )
        if cycles:
            self._close(
                _corner_rings([np.concatenate(_gather_keys(cyc, n_old, c.keys, keys)) for cyc in cycles], self.stride)
            )

    def _close(self, rings: list[_Ring]) -> None:
        """New holes wait; new shells (smallest first) take the waiting holes inside them."""
        holes = [r for r in rings if r.area2 < 0]
        if holes:
            self.holes.extend(holes)
            self.boxes = np.vstack([self.boxes, [h.bbox for h in holes]])
        shells = sorted((r for r in rings if r.area2 > 0), key=lambda r: r.area2)
        for shell, maybe in zip(shells, self._may_hold_holes(shells)):
            self.emit(shell.coords(), self._claim(shell) if maybe else [])

    def _may_hold_holes(self, shells: list[_Ring]) -> np.ndarray:
        """Per shell: does the bounding box of some waiting hole lie in its bounding box?"""
        maybe = np.zeros(len(shells), bool)
        # a shell around a hole spans at least 8 pixels (3 x 3 less a corner where the hole touches
        # the outside at a point): most shells of noisy masks are smaller
        big = np.flatnonzero([s.area2 >= 16 for s in shells]) if self.holes else []
        if len(big) == 0:
            return maybe
        boxes = np.array([shells[i].bbox for i in big])
        step = max(1, 2**22 // len(self.holes))  # shells per block: bounded pair matrices
        for i in range(0, len(big), step):
            b = boxes[i : i + step, None, :]
            inside = ((self.boxes[None, :, :2] >= b[..., :2]) & (self.boxes[None, :, 2:] <= b[..., 2:])).all(2)
            maybe[big[i : i + step]] = inside.any(1)
        return maybe

    def _claim(self, shell: _Ring) -> list[np.ndarray]:
        x0, y0, x1, y1 = shell.bbox
        boxes = self.boxes
        near = np.flatnonzero((boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1))
        if near.size == 0:
            return []
        points = np.array([_inner_point(self.holes[i].x, self.holes[i].y) for i in near])
        taken = near[_inside(shell.x, shell.y, points[:, 0], points[:, 1])]
        mine = [self.holes[i] for i in taken.tolist()]
        mine = [h.coords() for h in sorted(mine, key=lambda h: (int(h.y[0]), int(h.x[0])))]
        if taken.size:
            keep = np.ones(len(self.holes), bool)
            keep[taken] = False
            self.holes = [h for h, k in zip(self.holes, keep.tolist()) if k]
            self.boxes = self.boxes[keep]
        return mine


class PolygonTracer:
    """Trace the polygons of some classes of an ``(H, W)`` class-index mask given band by band.

    Args:
        width: ``W``.
        classes: the class indices to trace (e.g. every class but the background).
        emit: ``emit(class_index, shell (n, 2) int64, holes [(m, 2) int64, ...])`` per polygon;
            rings are given without repeating the first vertex.
    """

    def __init__(self, width: int, classes: Iterable[int], emit: Callable[[int, np.ndarray, list], None]):
        self.width = int(width)
        self.y = 0
        self.tracers = {int(c): _ClassTracer(self.width, self._emitter(int(c), emit)) for c in classes}

    @staticmethod
    def _emitter(c: int, emit):
        return lambda shell, holes: emit(c, shell, holes)

    def add_rows(self, y0: int, rows: np.ndarray) -> None:
        """The next rows ``(n, W)`` of the mask, starting at image row ``y0`` (consecutive)."""
        rows = np.asarray(rows)
        if y0 != self.y or rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected rows from {self.y} of width {self.width}, got {rows.shape} at {y0}")
        if rows.shape[0] == 0:
            return
        self.y = y0 + rows.shape[0]
        for c, tracer in self.tracers.items():
            tracer.add(y0, rows == c, self.y)

    def finish(self) -> None:
        """Close the bottom boundary and emit the remaining polygons."""
        empty = np.zeros((1, self.width), bool)
        for tracer in self.tracers.values():
            tracer.add(self.y, empty, None)


def mask_polygons(mask: np.ndarray, classes: Iterable[int]) -> list[tuple[int, np.ndarray, list[np.ndarray]]]:
    """``[(class_index, shell, holes), ...]`` of a whole ``(H, W)`` class-index mask."""
    found: list = []
    tracer = PolygonTracer(mask.shape[1], classes, lambda c, shell, holes: found.append((c, shell, holes)))
    tracer.add_rows(0, mask)
    tracer.finish()
    return found
