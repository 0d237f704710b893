"""Atomic file writers.

Every writer writes to a hidden temporary file in the destination folder, flushes it to disk
(``fsync``), renames it over the destination with ``os.replace`` (atomic on POSIX and Windows
within one file system) and then flushes the folder (POSIX), so an exception never leaves a
half-written file and the temporary file is removed on failure. What that survives: a crash of
the process (or a kill) at any point leaves either the old file or the complete new one; a power
loss or kernel crash after the writer returned leaves the new file, its content and the rename
durable on POSIX file systems that honour ``fsync`` (ext4, XFS, APFS, ...; not guaranteed on
network file systems or disks that ignore flushes); on Windows the file's content is flushed, the
folder cannot be. Parent folders are created as needed.

:func:`check_output_dir` and :func:`check_output_file` refuse, before any work starts, an output
location that cannot be written: a file where a folder is needed (or the reverse), or a folder
without write permission.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from biomedseg.core.errors import UserError

#: Arrays larger than this are written as BigTIFF (classic TIFF offsets stop at 4 GiB; the
#: margin leaves room for tags and compression overhead).
BIGTIFF_BYTES = 2**32 - 2**25
#: Images with more pixels than this are written tiled by default.
TILE_PIXELS = 1024 * 1024


def _fsync(path: Path, folder: bool = False) -> None:
    """Flush ``path`` (a file or, with ``folder``, a folder's entries) to disk. A folder that
    cannot be opened or flushed (Windows, some network file systems), or a file system without
    flushing (``EINVAL``/``ENOTSUP``: the rename stays atomic, only not durable) is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY if folder or os.name != "nt" else os.O_RDWR)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not folder and exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary name is hidden and keeps the suffix (``.x.1a2b3c.tmp.png``) so that
    writers which pick the format from the extension still work. On an exception the
    temporary file is removed and the exception propagates; ``path`` is untouched. The file is
    flushed before the rename and the folder after it (module docstring: what that survives).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, str(tmp), tmp):
            # name the file the caller asked for (a failed write() names none), not the temporary one
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def _writable_ancestor(path: Path, wanted: Path) -> None:
    """Refuse ``wanted`` unless the nearest existing folder at or above ``path`` can be written."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{wanted}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{wanted}: folder {probe} is not writable (permissions or a read-only file system)")


def check_output_dir(path: str | os.PathLike) -> Path:
    """Refuse (``UserError``) an output folder that cannot be written: an existing file in its
    place, a file among its parents, or a read-only folder. Returns the path; creates nothing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{p}: exists and is a file, not a folder (choose another output folder)")
    _writable_ancestor(p.absolute(), p)
    return p


def check_output_file(path: str | os.PathLike) -> Path:
    """Refuse (``UserError``) an output file that cannot be written: an existing folder in its
    place, or a parent that is a file or a read-only folder. Returns the path; creates nothing."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p}: is a folder, expected a file name")
    _writable_ancestor(p.absolute().parent, p)
    return p


#: zlib level of pictures written for people to look at (``write_png(..., preview=True)``): level 1
#: encodes a 2048x2048 RGB overlay ~4.6x faster than Pillow's default 6 (0.25 s vs 1.15 s) and, on
#: noisy images, even smaller; data (masks, tiles) keeps the default.
PREVIEW_PNG_LEVEL = 1


def write_png(path: str | os.PathLike, array: np.ndarray, preview: bool = False) -> None:
    """Write ``(H, W)`` uint8/uint16, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 as PNG (lossless);
    ``preview``: a picture (overlay, panel) compressed fast (:data:`PREVIEW_PNG_LEVEL`)."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    ok = (arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)) or (
        arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    )
    if not ok:
        raise ValueError(f"write_png takes (H, W) uint8/uint16 or (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    image = Image.fromarray(np.ascontiguousarray(arr))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", **({"compress_level": PREVIEW_PNG_LEVEL} if preview else {}))


def write_tiff(
    path: str | os.PathLike, array: np.ndarray, tile: tuple[int, int] | None = None, compression: str | None = "zlib"
) -> None:
    """Write ``(H, W)`` or ``(H, W, 3)`` (any numeric dtype) as a compressed TIFF.

    ``tile=None`` tiles with 256x256 when the image exceeds ``TILE_PIXELS`` pixels (tile
    sizes must be multiples of 16). BigTIFF is used automatically for arrays near 4 GiB.
    """
    import tifffile

    arr = np.ascontiguousarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:  # one channel: a 2D page (a 3D array would be a stack of H pages)
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"write_tiff takes (H, W) or (H, W, C), got shape {arr.shape}")
    if tile is None and arr.shape[0] * arr.shape[1] > TILE_PIXELS:
        tile = (256, 256)
    photometric = "rgb" if arr.ndim == 3 and arr.shape[2] == 3 else "minisblack"
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            arr,
            tile=tile,
            compression=compression,
            photometric=photometric,
            bigtiff=arr.nbytes > BIGTIFF_BYTES,
            metadata=None,
        )


def _jsonable(obj: Any) -> Any:
    """Plain-Python copy of ``obj``: numpy scalars/arrays, paths, tuples, sets, dataclasses
    converted; NaN and infinities become ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON (see :func:`_jsonable` for conversions)."""
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    write_text(path, text + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
