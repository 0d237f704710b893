"""Output writers of streaming prediction: images written strip by strip, never held whole.

- :class:`ZarrArrayWriter`: an OME-Zarr (NGFF 0.4, zarr format 2) image with one level ``0``;
- :class:`StripWriter`: a thread that assembles finalised rows into strips one output tile
  high and writes the ``(H, W) uint8`` class-index mask as a tiled (Big)TIFF or OME-Zarr, and
  optionally the ``(K, H, W) float16`` probabilities (OME-Zarr, or a K-page tiled TIFF);
- partial files: outputs are written to ``name.partial.ext`` (:func:`partial_path`) and renamed
  by :func:`finish_output` when complete, so an interrupted run never leaves a file that looks
  finished. (Unlike :func:`biomedseg.io.writers.atomic_path`, the partial name is fixed and
  visible, and the output may be a zarr folder.)
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from pathlib import Path

import numpy as np

from biomedseg.inference.stream_queues import END, get_unless_stopped
from biomedseg.io.writers import BIGTIFF_BYTES

__all__ = ["BIGTIFF_BYTES", "StripWriter", "ZarrArrayWriter", "finish_output", "partial_path", "remove_output"]


# ====================================================================== partial files

def partial_path(path: Path) -> Path:
    """``out/x.tif`` -> ``out/x.partial.tif``: where an output is written until it is complete."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def remove_output(path: Path) -> None:
    """Delete a file or a (zarr) folder if it exists."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def finish_output(partial: Path, final: Path) -> None:
    """Rename a complete ``partial`` output to ``final``, replacing a previous file or folder."""
    if final.exists() and final.is_dir():
        shutil.rmtree(final)
    os.replace(partial, final)


# ====================================================================== OME-Zarr

class ZarrArrayWriter:
    """An OME-Zarr (NGFF 0.4, zarr format 2) image with one level ``0`` written strip by strip.

    ``shape``: ``(H, W)`` (axes ``"yx"``) or ``(K, H, W)`` (axes ``"cyx"``); chunks are
    ``(1, ..., tile, tile)``; any previous file or folder at ``path`` is removed.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, tile: int, axes: str):
        import zarr

        remove_output(path)
        chunks = (1,) * (len(shape) - 2) + (tile, tile)
        try:  # zarr >= 3: write zarr format 2 (OME-NGFF 0.4), the widely read flavour
            self.group = zarr.open_group(str(path), mode="w", zarr_format=2)
            self.array = self.group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        except (TypeError, AttributeError):  # zarr 2
            self.group = zarr.open_group(str(path), mode="w")
            self.array = self.group.create_dataset("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        self.group.attrs["multiscales"] = _multiscales(path, shape, axes)

    def write(self, y0: int, block: np.ndarray) -> None:
        """Store ``block`` (``(..., n, W)``) at rows ``[y0, y0 + n)``."""
        self.array[..., y0:y0 + block.shape[-2], :] = block


def _multiscales(path: Path, shape: tuple[int, ...], axes: str) -> list[dict]:
    """OME-NGFF 0.4 ``multiscales`` metadata of a one-level image (unit scale)."""
    kinds = {"c": "channel", "y": "space", "x": "space"}
    return [{
        "version": "0.4", "name": path.name.split(".")[0],
        "axes": [{"name": a, "type": kinds[a]} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(shape)}]}],
    }]


# ====================================================================== writer thread

class StripWriter(threading.Thread):
    """Assembles finalised rows into strips ``tile`` rows high and writes them: the mask as a tiled
    TIFF (tifffile pulls tiles from a generator fed by the queue) or OME-Zarr; probabilities as
    OME-Zarr, or via a temporary zarr converted to a ``(K, H, W)`` float16 tiled TIFF at the end.

    Feed :attr:`q` with ``(y0, mask (n, W) uint8, proba (K, n, W) float16 or None)`` for
    consecutive rows, then :data:`~biomedseg.inference.stream_queues.END`. An exception is
    stored in :attr:`error` (and ``stop`` set) for the feeding thread to raise.
    """

    def __init__(self, shape, n_classes, tile, mask_path, mask_fmt, proba_path, proba_fmt, compression, stop,
                 prefetch=2):
        super().__init__(daemon=True, name="biomedseg-writer")
        self.h, self.w = shape
        self.k = n_classes
        self.tile = tile
        self.mask_path, self.mask_fmt = mask_path, mask_fmt
        self.proba_path, self.proba_fmt = proba_path, proba_fmt
        self.compression = compression
        self.q: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop = stop
        self.error: BaseException | None = None
        self.proba_store: ZarrArrayWriter | None = None
        self.mask_store: ZarrArrayWriter | None = None
        self._tmp_proba: Path | None = None

    # --- strips
    def _strips(self):
        """Yield ``(y0, mask (t, W), proba (K, t, W) or None)`` strips (the last may be lower);
        the buffers are reused for the next strip."""
        t, w = self.tile, self.w
        mbuf = np.zeros((t, w), np.uint8)
        pbuf = np.zeros((self.k, t, w), np.float16) if self.proba_path is not None else None
        filled, strip_y = 0, 0
        while True:
            item = get_unless_stopped(self.q, self.stop)
            if item is END:
                if self.stop.is_set():
                    raise RuntimeError("stopped")
                break
            y0, mask, proba = item
            n, off = mask.shape[0], 0
            while off < n:
                take = min(t - filled, n - off)
                mbuf[filled:filled + take] = mask[off:off + take]
                if pbuf is not None:
                    pbuf[:, filled:filled + take] = proba[:, off:off + take]
                filled += take
                off += take
                if filled == t or strip_y + filled == self.h:
                    yield strip_y, mbuf[:filled], (pbuf[:, :filled] if pbuf is not None else None)
                    strip_y += filled
                    filled = 0
        if strip_y != self.h:
            raise RuntimeError(f"writer got {strip_y} of {self.h} rows")

    def _push_sinks(self, strips):
        """Write each strip to the zarr stores; pass ``(y0, mask)`` on."""
        for y0, mask, proba in strips:
            if proba is not None:
                self.proba_store.write(y0, proba)
            if self.mask_store is not None:
                self.mask_store.write(y0, mask)
            yield y0, mask

    def _mask_tiles(self, strips):
        """Yield the ``(t, t)`` mask tiles of each strip, row-major (edge tiles smaller)."""
        # copies: the strip buffer is reused for the next strip
        t = self.tile
        for _, mask in strips:
            for x in range(0, self.w, t):
                yield mask[:, x:x + t].copy()

    # --- thread body
    def run(self):
        try:
            if self.proba_path is not None:
                self._open_proba_store()
            strips = self._push_sinks(self._strips())
            if self.mask_fmt == "zarr":
                self.mask_store = ZarrArrayWriter(self.mask_path, (self.h, self.w), np.uint8, self.tile, "yx")
                for _ in strips:
                    pass
            else:
                self._write_mask_tiff(strips)
            if self._tmp_proba is not None:
                self._proba_to_tiff()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.stop.set()

    def _open_proba_store(self):
        """The probabilities' zarr: the output itself, or a temporary one for a TIFF output."""
        if self.proba_fmt == "zarr":
            target = self.proba_path
        else:
            target = self._tmp_proba = self.proba_path.with_name(self.proba_path.name + ".tmp.zarr")
        self.proba_store = ZarrArrayWriter(target, (self.k, self.h, self.w), np.float16, self.tile, "cyx")

    def _write_mask_tiff(self, strips):
        """Tiled ``(H, W) uint8`` TIFF (BigTIFF when large) from the strips."""
        import tifffile

        remove_output(self.mask_path)
        with tifffile.TiffWriter(self.mask_path, bigtiff=self.h * self.w > BIGTIFF_BYTES) as tw:
            # maxworkers=1: tiles are pulled one at a time; with a pool, tifffile reads
            # up to hundreds of MB of tiles ahead of encoding them
            tw.write(self._mask_tiles(strips), shape=(self.h, self.w), dtype=np.uint8,
                     tile=(self.tile, self.tile), compression=self.compression,
                     photometric="minisblack", metadata=None, maxworkers=1)

    def _proba_to_tiff(self):
        """Temporary ``(K, H, W)`` zarr -> tiled float16 TIFF with K pages (as ``write_tiff``)."""
        import tifffile

        arr, t = self.proba_store.array, self.tile

        def tiles(k):
            for y in range(0, self.h, t):
                strip = np.asarray(arr[k, y:y + t, :])
                for x in range(0, self.w, t):
                    yield strip[:, x:x + t]

        remove_output(self.proba_path)
        big = self.k * self.h * self.w * 2 > BIGTIFF_BYTES
        with tifffile.TiffWriter(self.proba_path, bigtiff=big) as tw:
            for k in range(self.k):
                tw.write(tiles(k), shape=(self.h, self.w), dtype=np.float16, tile=(t, t),
                         compression=self.compression, photometric="minisblack", metadata=None, maxworkers=1)
        shutil.rmtree(self._tmp_proba, ignore_errors=True)

    def cleanup(self):
        """Remove the partial outputs and the temporary zarr (after a failure)."""
        for p in (self._tmp_proba, self.mask_path, self.proba_path):
            if p is not None:
                remove_output(p)
