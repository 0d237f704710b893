"""Output writers of streaming prediction: images written strip by strip, never held whole.

- :class:`ZarrArrayWriter`: a multiscale OME-Zarr (NGFF 0.4, zarr format 2) image: level ``0``
  and, when large, sub-resolutions (:func:`biomedseg.io.ome.pyramid_shapes`) filled from each
  strip as it goes (every 2nd row and column: nearest neighbour);
- :class:`StripWriter`: a thread that assembles finalised rows into strips one output tile
  high and writes the ``(H, W) uint8`` class-index mask as a tiled (Big) OME-TIFF or OME-Zarr, and
  optionally the ``(K, H, W) float16`` probabilities (OME-Zarr, or a K-page tiled TIFF); the
  physical pixel size (µm) of the input goes into the metadata, and large TIFFs get tiled
  sub-resolution levels (SubIFDs), written after level 0 from a temporary zarr filled strip by strip;
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

from biomedseg.io.ome import array_tiles, level_rows, ngff_multiscales, pyramid_shapes, write_ome_levels
from biomedseg.io.writers import BIGTIFF_BYTES
from biomedseg.stream.queues import END, get_unless_stopped

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
    """A multiscale OME-Zarr (NGFF 0.4, zarr format 2) image written strip by strip.

    ``shape``: ``(H, W)`` (axes ``"yx"``) or ``(K, H, W)`` (axes ``"cyx"``); chunks are
    ``(1, ..., tile, tile)``; any previous file or folder at ``path`` is removed. Levels follow
    :func:`~biomedseg.io.ome.pyramid_shapes` (``pyramid_above``); ``pixel_size`` ``(y, x)`` µm
    scales them. ``keep_level0=False`` stores only the sub-resolutions (a TIFF's temporary).
    :attr:`array` is level 0, :attr:`arrays` every stored level by index.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype,
        tile: int,
        axes: str,
        pixel_size=None,
        pyramid_above: int | None = None,
        keep_level0: bool = True,
    ):
        import zarr

        remove_output(path)
        chunks = (1,) * (len(shape) - 2) + (tile, tile)
        self.shapes = pyramid_shapes(shape[-2:], pyramid_above)
        try:  # zarr >= 3: write zarr format 2 (OME-NGFF 0.4), the widely read flavour
            self.group = zarr.open_group(str(path), mode="w", zarr_format=2)
            create = self.group.create_array
        except (TypeError, AttributeError):  # zarr 2
            self.group = zarr.open_group(str(path), mode="w")
            create = self.group.create_dataset
        self.arrays = {
            i: create(str(i), shape=tuple(shape[:-2]) + hw, chunks=chunks, dtype=dtype, fill_value=0)
            for i, hw in enumerate(self.shapes)
            if i or keep_level0
        }
        self.array = self.arrays.get(0)
        self.group.attrs["multiscales"] = ngff_multiscales(path.name.split(".")[0], axes, len(self.shapes), pixel_size)

    def write(self, y0: int, block: np.ndarray) -> None:
        """Store ``block`` (``(..., n, W)``) at rows ``[y0, y0 + n)`` of level 0 (and its rows of
        the sub-resolutions)."""
        for i, arr in self.arrays.items():
            ly, rows = level_rows(y0, block, 2**i)
            if rows.shape[-2]:
                arr[..., ly : ly + rows.shape[-2], :] = rows


# ====================================================================== writer thread


class StripWriter(threading.Thread):
    """Assembles finalised rows into strips ``tile`` rows high and writes them: the mask as a tiled
    TIFF (tifffile pulls tiles from a generator fed by the queue) or OME-Zarr; probabilities as
    OME-Zarr, or via a temporary zarr converted to a ``(K, H, W)`` float16 tiled TIFF at the end.

    Feed :attr:`q` with ``(y0, mask (n, W) uint8, proba (K, n, W) float16 or None)`` for
    consecutive rows, then :data:`~biomedseg.stream.queues.END`. An exception is
    stored in :attr:`error` (and ``stop`` set) for the feeding thread to raise.
    """

    def __init__(
        self,
        shape,
        n_classes,
        tile,
        mask_path,
        mask_fmt,
        proba_path,
        proba_fmt,
        compression,
        stop,
        prefetch=2,
        pixel_size=None,
        pyramid_above: int | None = None,
    ):
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
        self.pixel_size, self.pyramid_above = pixel_size, pyramid_above
        self.levels_store: ZarrArrayWriter | None = None  # a TIFF mask's sub-resolutions
        self._tmp_levels: Path | None = None

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
                mbuf[filled : filled + take] = mask[off : off + take]
                if pbuf is not None:
                    pbuf[:, filled : filled + take] = proba[:, off : off + take]
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
            for store in (self.mask_store, self.levels_store):
                if store is not None:
                    store.write(y0, mask)
            yield y0, mask

    def _mask_tiles(self, strips):
        """Yield the ``(t, t)`` mask tiles of each strip, row-major (edge tiles smaller)."""
        # copies: the strip buffer is reused for the next strip
        t = self.tile
        for _, mask in strips:
            for x in range(0, self.w, t):
                yield mask[:, x : x + t].copy()

    # --- thread body
    def run(self):
        try:
            if self.proba_path is not None:
                self._open_proba_store()
            strips = self._push_sinks(self._strips())
            if self.mask_fmt == "zarr":
                self.mask_store = ZarrArrayWriter(
                    self.mask_path, (self.h, self.w), np.uint8, self.tile, "yx", self.pixel_size, self.pyramid_above
                )
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
        self.proba_store = ZarrArrayWriter(
            target, (self.k, self.h, self.w), np.float16, self.tile, "cyx", self.pixel_size, self.pyramid_above
        )

    def _write_mask_tiff(self, strips):
        """Tiled ``(H, W) uint8`` OME-TIFF (BigTIFF when large) from the strips; its sub-resolutions
        are collected in a temporary zarr while level 0 is written, and written after it."""
        remove_output(self.mask_path)
        if len(pyramid_shapes((self.h, self.w), self.pyramid_above)) > 1:
            self._tmp_levels = self.mask_path.with_name(self.mask_path.name + ".levels.tmp.zarr")
            self.levels_store = ZarrArrayWriter(
                self._tmp_levels,
                (self.h, self.w),
                np.uint8,
                self.tile,
                "yx",
                pyramid_above=self.pyramid_above,
                keep_level0=False,
            )
        self._write_tiff(self.mask_path, self._mask_tiles(strips), self.levels_store, (self.h, self.w), np.uint8)
        if self._tmp_levels is not None:
            shutil.rmtree(self._tmp_levels, ignore_errors=True)

    def _write_tiff(self, path, level0, store, shape, dtype):
        """Level 0 from the iterator of tiles ``level0``, then ``store``'s sub-resolutions."""
        t = self.tile
        levels = [(shape, level0)]
        if store is not None:
            levels += [
                (tuple(shape[:-2]) + hw, array_tiles(store.arrays[i], t)) for i, hw in enumerate(store.shapes) if i
            ]
        big = int(np.prod(shape)) * np.dtype(dtype).itemsize > BIGTIFF_BYTES
        # maxworkers=1 (write_ome_levels): tiles are pulled one at a time; with a pool, tifffile
        # reads up to hundreds of MB of tiles ahead of encoding them
        write_ome_levels(
            path,
            levels,
            dtype=dtype,
            axes="YX" if len(shape) == 2 else "CYX",
            tile=t,
            pixel_size=self.pixel_size,
            compression=self.compression,
            bigtiff=big,
        )

    def _proba_to_tiff(self):
        """Temporary ``(K, H, W)`` zarr -> tiled float16 TIFF with K pages (and sub-resolutions)."""
        store = self.proba_store
        remove_output(self.proba_path)
        self._write_tiff(
            self.proba_path, array_tiles(store.array, self.tile), store, (self.k, self.h, self.w), np.float16
        )
        shutil.rmtree(self._tmp_proba, ignore_errors=True)

    def cleanup(self):
        """Remove the partial outputs and the temporary zarr (after a failure)."""
        for p in (self._tmp_proba, self._tmp_levels, self.mask_path, self.proba_path):
            if p is not None:
                remove_output(p)
