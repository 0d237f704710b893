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
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger("biomedseg")

__all__ = [
    "rle_encode",
    "rle_decode",
    "write_rle_csv",
    "instance_rle_rows",
    "read_rle_csv",
    "rle_rows_for",
    "rle_rows_from_outputs",
    "write_rle",
]


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


def write_rle_csv(rows: Iterable[Sequence], path: str | os.PathLike, header: Sequence[str] = ("img", "pixels")) -> None:
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


# ---------------------------------------------------------------- rows of a predicted run


def _rle_kind(run, instances: bool) -> str:
    from biomedseg.postprocess.ops import foreground

    if instances:
        return "instances"
    return "binary" if len(foreground(len(run.classes), run.background)) == 1 else "multiclass"


def rle_rows_for(stem: str, mask: np.ndarray, labels: np.ndarray | None, run, instances: bool) -> list[tuple]:
    """RLE CSV rows of one image (see the module docstring for the three layouts)."""
    from biomedseg.postprocess.ops import foreground

    kind = _rle_kind(run, instances)
    fg = foreground(len(run.classes), run.background)
    if kind == "instances":
        if labels is None:
            from biomedseg.postprocess.ops import combine_instances, label_objects

            labels = combine_instances({c: label_objects(mask == c)[0] for c in fg}, mask.shape)
        return instance_rle_rows(stem, labels)
    if kind == "binary":
        return [(stem, rle_encode(mask == fg[0]))]
    return [(stem, run.classes[c], rle_encode(mask == c)) for c in fg]


def rle_rows_from_outputs(out: Path, stem: str, run, instances: bool, encoding=None) -> list[tuple]:
    """RLE rows of an input already predicted (resumed run, distributed run): read back its
    mask (and ``_instances.tif``; ``encoding``: the ``--mask-format`` it was written in, default
    class indices). Streamed (tiled TIFF/zarr, huge) masks have none."""
    from biomedseg.inference.predict.outputs import STREAM_ABOVE_PIXELS, existing_mask
    from biomedseg.io.mask_encoding import read_written_mask

    mask_path = existing_mask(out, stem)
    if mask_path is None or mask_path.suffix == ".zarr":
        return []
    from biomedseg.io import image_shape

    if np.prod(image_shape(mask_path)) > STREAM_ABOVE_PIXELS:
        log.info("%s: large mask, left out of the RLE file", mask_path)
        return []
    mask = read_written_mask(mask_path, encoding)
    labels = None
    inst = out / f"{stem}_instances.tif"
    if instances and inst.is_file():
        import tifffile

        labels = tifffile.imread(inst)
    return rle_rows_for(stem, mask, labels, run, instances)


def write_rle(path, rows: list[tuple], run, instances: bool) -> Path:
    """Write the RLE CSV with the header matching the rows' layout."""
    header = {
        "instances": ("ImageId", "EncodedPixels"),
        "binary": ("img", "pixels"),
        "multiclass": ("img", "class", "pixels"),
    }[_rle_kind(run, instances)]
    write_rle_csv(rows, path, header=header)
    return Path(path)
