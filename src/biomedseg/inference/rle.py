"""Run-length encoding of masks, Kaggle convention.

Pixels are numbered from 1, top to bottom then left to right (column-major, Fortran order);
a mask is written as space-separated ``start length`` pairs of its non-zero runs, e.g.
``"1 3 10 5"`` = pixels 1-3 and 10-14. An empty mask is the empty string.

CSV files (:func:`write_rle_csv`) have a header row, ``img,pixels`` by default (Kaggle's
ultrasound nerve segmentation), or ``ImageId,EncodedPixels`` with one row per object for
instance outputs (Kaggle's data science bowl / ship detection).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Iterable, Sequence

import numpy as np

__all__ = ["rle_encode", "rle_decode", "write_rle_csv", "instance_rle_rows", "read_rle_csv"]


def rle_encode(mask: np.ndarray) -> str:
    """``(H, W)`` mask (non-zero = on) -> ``"start length start length ..."`` (1-indexed, column-major)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"rle_encode takes a 2D mask, got shape {m.shape}")
    flat = m.ravel(order="F") != 0
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])  # 0-based run starts and ends (exclusive)
    starts, ends = changes[::2], changes[1::2]
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def rle_decode(text: str | None, shape: Sequence[int], value: int = 1, dtype=np.uint8) -> np.ndarray:
    """Inverse of :func:`rle_encode`: ``(H, W)`` array of ``dtype`` with ``value`` on the runs.

    Raises ``ValueError`` for an odd number of values, non-positive starts/lengths, runs that
    overlap or are out of order, or runs past the last pixel.
    """
    h, w = (int(s) for s in shape)
    out = np.zeros(h * w, dtype=dtype)
    text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text).strip()
    if text:
        try:
            nums = np.asarray(text.split(), dtype=np.int64)
        except ValueError:
            raise ValueError(f"RLE text is not a list of integers: {text[:60]!r}") from None
        if len(nums) % 2:
            raise ValueError(f"RLE has an odd number of values ({len(nums)})")
        starts, lengths = nums[0::2] - 1, nums[1::2]
        if (starts < 0).any() or (lengths <= 0).any():
            raise ValueError("RLE starts must be >= 1 and lengths >= 1")
        ends = starts + lengths
        if (starts[1:] < ends[:-1]).any():
            raise ValueError("RLE runs overlap or are not in increasing order")
        if len(ends) and ends[-1] > h * w:
            raise ValueError(f"RLE run ends at pixel {int(ends[-1])}, past the {h}x{w} image")
        delta = np.zeros(h * w + 1, dtype=np.int32)
        np.add.at(delta, starts, 1)
        np.add.at(delta, ends, -1)
        out[np.cumsum(delta[:-1]) > 0] = value
    return out.reshape((h, w), order="F")


def instance_rle_rows(image_id: str, labels: np.ndarray) -> list[tuple[str, str]]:
    """One ``(image_id, rle)`` row per instance label (ascending); ``[(image_id, "")]`` when none."""
    lab = np.asarray(labels)
    ids = np.unique(lab)
    ids = ids[ids != 0]
    if not len(ids):
        return [(image_id, "")]
    return [(image_id, rle_encode(lab == i)) for i in ids]


def write_rle_csv(rows: Iterable[Sequence], path: str | os.PathLike,
                  header: Sequence[str] = ("img", "pixels")) -> None:
    """Write ``rows`` (tuples matching ``header``) as a CSV, atomically."""
    from biomedseg.io.writers import write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow(list(row))
    write_text(path, buf.getvalue())


def read_rle_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of an RLE CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return (rows[0], rows[1:]) if rows else ([], [])
