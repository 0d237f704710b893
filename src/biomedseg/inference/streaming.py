"""Streaming tiled prediction of images larger than memory.

:class:`StreamingPredictor` predicts an image band by band (horizontal strips one tile high):

- the input is read a band at a time from a *tile source*: tiled/striped TIFF, BigTIFF, OME-TIFF
  (``tifffile`` zarr store, pyramid level selectable; uncompressed contiguous TIFFs are read by
  file offsets), zarr / OME-Zarr arrays, or an ordinary in-memory array;
- tiles use the same grid, padding, Gaussian weights and test-time augmentation as the in-memory
  :class:`~biomedseg.inference.sliding_window.SlidingWindowPredictor` (MONAI's), so both give the
  same probabilities (to float rounding);
- only one band of accumulated logits and weights (``K x tile x width``) is held; rows no later
  tile touches are finalised (softmax, class decision) and handed to the writer at once;
- the class-index mask (and optionally float16 probabilities) is written progressively as a
  tiled (Big)TIFF or an OME-Zarr, never held whole; outputs go to ``name.partial.*`` first and
  are renamed when complete, so an interrupted run never leaves a file that looks finished;
- reading, the network and writing run in three threads joined by small queues (``prefetch``);
- optionally, blank tiles (standard deviation of the normalised input below ``skip_blank_std``)
  are not run: pixels covered only by blank tiles become ``blank_class``.

Peak memory is independent of the image height and linear in its width (one band).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from biomedseg.errors import UserError
from biomedseg.inference.sliding_window import (
    importance_map,
    normalize_tta,
    optimize_for_inference,
    pad_before_after,
    reflect_pad,
    tile_starts,
    tta_forward,
    tta_transforms,
)

log = logging.getLogger("biomedseg")

DEFAULT_OUT_TILE = 256
#: uncompressed outputs above this many bytes are written as BigTIFF
BIGTIFF_BYTES = 2**32 - 2**25


# ====================================================================== tile sources

class TileSource:
    """A 2D image read by full-width row bands.

    Attributes: ``shape`` ``(H, W)``, ``channels`` (1..4 as stored), ``dtype``, ``tile``
    (the stored tile ``(th, tw)`` or ``None``). :meth:`read_rows` returns rows ``[y0, y1)`` as
    ``(y1 - y0, W, C)``.
    """

    shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    tile: tuple[int, int] | None = None
    name: str = "<array>"

    def read_rows(self, y0: int, y1: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _axes_plan(shape: tuple[int, ...], axes: str | None, name: str) -> tuple[list, int, int, int | None]:
    """From an array shape (and axes letters if known) build ``(index template, y_axis, x_axis,
    channel_axis)``. Singleton axes are indexed with 0; exactly one non-spatial axis may remain
    (the channels); more is a stack, which is refused."""
    nd = len(shape)
    if axes is not None and len(axes) == nd:
        axes = axes.upper()
        y_ax, x_ax = axes.rfind("Y"), axes.rfind("X")
        if y_ax < 0 or x_ax < 0:
            raise UserError(f"{name}: array axes {axes!r} have no Y/X")
    else:
        dims = [i for i, s in enumerate(shape) if s != 1]
        if nd == 2:
            y_ax, x_ax = 0, 1
        elif len(dims) == 3 and shape[dims[2]] <= 4:
            y_ax, x_ax = dims[0], dims[1]
        elif len(dims) >= 2:
            y_ax, x_ax = dims[-2], dims[-1]
        else:
            raise UserError(f"{name}: array of shape {tuple(shape)} is not a 2D image")
    others = [i for i in range(nd) if i not in (y_ax, x_ax) and shape[i] != 1]
    if len(others) > 1:
        raise UserError(f"{name}: array of shape {tuple(shape)} is a stack; only single 2D images are supported")
    c_ax = others[0] if others else None
    if c_ax is not None and shape[c_ax] > 4:
        raise UserError(f"{name}: {shape[c_ax]} channels; 1 (grey), 3 (RGB) or 4 (RGBA) expected")
    template = [slice(None) if i in (x_ax, c_ax) else 0 for i in range(nd)]
    return template, y_ax, x_ax, c_ax


class ArraySource(TileSource):
    """Any array supporting numpy slicing: numpy, ``np.memmap``, zarr arrays, tifffile stores.

    ``axes``: letters such as ``"YX"``, ``"YXS"``, ``"CYX"``, ``"TCZYX"`` (OME); ``None`` guesses
    ``(H, W)``, ``(H, W, C<=4)`` or ``(C, H, W)`` after dropping singleton axes.
    """

    def __init__(self, array, axes: str | None = None, name: str = "<array>", tile=None, closer=None):
        self.array = array
        self.name = name
        shape = tuple(int(s) for s in array.shape)
        self._template, self._y, self._x, self._c = _axes_plan(shape, axes, name)
        self.shape = (shape[self._y], shape[self._x])
        self.channels = shape[self._c] if self._c is not None else 1
        self.dtype = np.dtype(array.dtype)
        self.tile = tile
        self._closer = closer

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        idx = list(self._template)
        idx[self._y] = slice(y0, y1)
        block = np.asarray(self.array[tuple(idx)])
        kept = [i for i in range(len(idx)) if not isinstance(idx[i], int)]  # remaining axes, in order
        order = [kept.index(self._y), kept.index(self._x)] + ([kept.index(self._c)] if self._c is not None else [])
        block = np.transpose(block, order)
        return block if block.ndim == 3 else block[:, :, None]

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


class _ContiguousTiffSource(TileSource):
    """Uncompressed contiguous TIFF pages (ImageJ/raw writers): rows read by file offset, so a
    band costs a band of memory (tifffile's zarr store would decode the page as one chunk)."""

    def __init__(self, path: Path, page, axes: str, shape: tuple[int, ...], dtype: np.dtype):
        self.name = str(path)
        self._offset = int(page.dataoffsets[0])
        self._template, self._y, self._x, self._c = _axes_plan(shape, axes, self.name)
        if self._c is not None and self._c not in (0, len(shape) - 1):
            raise ValueError("unsupported layout")
        self._planar = self._c is not None and self._c < self._y
        self.shape = (shape[self._y], shape[self._x])
        self.channels = shape[self._c] if self._c is not None else 1
        self.dtype = np.dtype(dtype)
        self._fh = open(path, "rb")
        self.tile = None

    def _read(self, offset: int, count: int) -> np.ndarray:
        self._fh.seek(offset)
        buf = self._fh.read(count * self.dtype.itemsize)
        return np.frombuffer(buf, dtype=self.dtype, count=count).astype(self.dtype.newbyteorder("="))

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        h, w = self.shape
        n, c, item = y1 - y0, self.channels, self.dtype.itemsize
        if self._planar:
            planes = [self._read(self._offset + (p * h * w + y0 * w) * item, n * w).reshape(n, w) for p in range(c)]
            return np.stack(planes, axis=-1)
        return self._read(self._offset + y0 * w * c * item, n * w * c).reshape(n, w, c)

    def close(self) -> None:
        self._fh.close()


def _tiff_source(path: Path, level: int) -> TileSource:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise UserError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    try:
        if not tif.series:
            raise UserError(f"{path}: cannot read image (no image data in the TIFF file)")
        series = tif.series[0]
        levels = series.levels
        if not 0 <= level < len(levels):
            raise UserError(f"{path}: --level {level} does not exist (the file has {len(levels)} "
                            f"level{'s' if len(levels) != 1 else ''}: 0..{len(levels) - 1})")
        lev = levels[level]
        page = lev.pages[0] if lev.pages else tif.pages[0]
        tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE:
            raise UserError(f"{path}: palette (indexed colour) TIFFs are not supported for streaming")
        if (len(lev.pages) == 1 and page.is_contiguous and page.compression == 1 and not page.is_tiled
                and page.bitspersample in (8, 16, 32, 64)):
            try:
                dtype = lev.dtype.newbyteorder(tif.byteorder)
                src = _ContiguousTiffSource(path, page, lev.axes, tuple(lev.shape), dtype)
                tif.close()
                return src
            except ValueError:
                pass
        store = lev.aszarr()
        arr = zarr.open(store, mode="r")

        def closer():
            store.close()
            tif.close()

        return ArraySource(arr, axes=lev.axes, name=str(path), tile=tile, closer=closer)
    except BaseException:
        tif.close()
        raise


def _ome_axes(attrs: dict) -> tuple[list, str | None]:
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        return [], None
    axes = ms[0].get("axes")
    letters = None
    if axes:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        letters = "".join(n[0].upper() for n in names)
    return [d["path"] for d in ms[0].get("datasets", [])], letters


def _zarr_source(path: Path, level: int) -> TileSource:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise UserError(f"{path}: cannot open zarr ({type(exc).__name__}: {exc})") from None
    axes = None
    if isinstance(node, zarr.Group):
        paths, axes = _ome_axes(dict(node.attrs))
        if not paths:
            arrays = sorted(name for name, _ in node.arrays())
            if len(arrays) != 1:
                raise UserError(f"{path}: zarr group without OME multiscales metadata and "
                                f"{len(arrays)} arrays; pass the array itself")
            paths = arrays
        if not 0 <= level < len(paths):
            raise UserError(f"{path}: --level {level} does not exist (levels 0..{len(paths) - 1})")
        node = node[paths[level]]
    elif level:
        raise UserError(f"{path}: --level {level}: a plain zarr array has one level")
    chunks = getattr(node, "chunks", None)
    return ArraySource(node, axes=axes, name=str(path), tile=tuple(chunks[-2:]) if chunks else None)


def open_source(obj, level: int = 0) -> TileSource:
    """A :class:`TileSource` for a path (TIFF, ``.zarr``, or any image ``read_image`` reads),
    a zarr array or a numpy array ``(H, W)`` / ``(H, W, C)``."""
    if isinstance(obj, TileSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir() or path.suffix.lower() == ".zarr":
            return _zarr_source(path, level)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_source(path, level)
        from biomedseg.io import read_image

        if level:
            log.warning("%s: --level %d ignored (not a pyramid TIFF or zarr)", path, level)
        return ArraySource(read_image(path), axes="YXC", name=str(path))
    return ArraySource(obj)


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


# ====================================================================== output sinks

def partial_path(path: Path) -> Path:
    """``out/x.tif`` -> ``out/x.partial.tif``: where an output is written until it is complete."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _finish(partial: Path, final: Path) -> None:
    if final.exists() and final.is_dir():
        shutil.rmtree(final)
    os.replace(partial, final)


class _ZarrArrayWriter:
    """An OME-Zarr (NGFF 0.4, zarr format 2) image with one level ``0`` written strip by strip."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, tile: int, axes: str):
        import zarr

        _remove(path)
        chunks = (1,) * (len(shape) - 2) + (tile, tile)
        try:  # zarr >= 3: write zarr format 2 (OME-NGFF 0.4), the widely read flavour
            self.group = zarr.open_group(str(path), mode="w", zarr_format=2)
            self.array = self.group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        except (TypeError, AttributeError):  # zarr 2
            self.group = zarr.open_group(str(path), mode="w")
            self.array = self.group.create_dataset("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        kinds = {"c": "channel", "y": "space", "x": "space"}
        self.group.attrs["multiscales"] = [{
            "version": "0.4", "name": path.name.split(".")[0],
            "axes": [{"name": a, "type": kinds[a]} for a in axes],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(shape)}]}],
        }]

    def write(self, y0: int, block: np.ndarray) -> None:
        self.array[..., y0:y0 + block.shape[-2], :] = block


@dataclass
class StreamResult:
    """What :meth:`StreamingPredictor.predict_to_files` did."""

    shape: tuple[int, int]
    n_tiles: int = 0
    n_skipped: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    @property
    def mpix_per_s(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6 / max(self.seconds, 1e-9)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless ``stop`` is set; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


class _Writer(threading.Thread):
    """Assembles finalised rows into strips ``tile`` rows high and writes them: the mask as a tiled
    TIFF (tifffile pulls tiles from a generator fed by the queue) or OME-Zarr; probabilities as
    OME-Zarr, or via a temporary zarr converted to a ``(K, H, W)`` float16 tiled TIFF at the end."""

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
        self.proba_store: _ZarrArrayWriter | None = None
        self.mask_store: _ZarrArrayWriter | None = None
        self._tmp_proba: Path | None = None

    # --- strips
    def _strips(self):
        t, w = self.tile, self.w
        mbuf = np.zeros((t, w), np.uint8)
        pbuf = np.zeros((self.k, t, w), np.float16) if self.proba_path is not None else None
        filled, strip_y = 0, 0
        while True:
            item = _get(self.q, self.stop)
            if item is _END:
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
        for y0, mask, proba in strips:
            if proba is not None:
                self.proba_store.write(y0, proba)
            if self.mask_store is not None:
                self.mask_store.write(y0, mask)
            yield y0, mask

    def _mask_tiles(self, strips):
        # copies: the strip buffer is reused for the next strip
        t = self.tile
        for _, mask in strips:
            for x in range(0, self.w, t):
                yield mask[:, x:x + t].copy()

    def run(self):
        try:
            if self.proba_path is not None:
                if self.proba_fmt == "zarr":
                    target = self.proba_path
                else:
                    target = self._tmp_proba = self.proba_path.with_name(self.proba_path.name + ".tmp.zarr")
                self.proba_store = _ZarrArrayWriter(target, (self.k, self.h, self.w), np.float16, self.tile, "cyx")
            strips = self._push_sinks(self._strips())
            if self.mask_fmt == "zarr":
                self.mask_store = _ZarrArrayWriter(self.mask_path, (self.h, self.w), np.uint8, self.tile, "yx")
                for _ in strips:
                    pass
            else:
                import tifffile

                _remove(self.mask_path)
                with tifffile.TiffWriter(self.mask_path, bigtiff=self.h * self.w > BIGTIFF_BYTES) as tw:
                    # maxworkers=1: tiles are pulled one at a time; with a pool, tifffile reads
                    # up to hundreds of MB of tiles ahead of encoding them
                    tw.write(self._mask_tiles(strips), shape=(self.h, self.w), dtype=np.uint8,
                             tile=(self.tile, self.tile), compression=self.compression,
                             photometric="minisblack", metadata=None, maxworkers=1)
            if self._tmp_proba is not None:
                self._proba_to_tiff()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.stop.set()

    def _proba_to_tiff(self):
        """Temporary ``(K, H, W)`` zarr -> tiled float16 TIFF with K pages (as ``write_tiff``)."""
        import tifffile

        arr, t = self.proba_store.array, self.tile

        def tiles(k):
            for y in range(0, self.h, t):
                strip = np.asarray(arr[k, y:y + t, :])
                for x in range(0, self.w, t):
                    yield strip[:, x:x + t]

        _remove(self.proba_path)
        big = self.k * self.h * self.w * 2 > BIGTIFF_BYTES
        with tifffile.TiffWriter(self.proba_path, bigtiff=big) as tw:
            for k in range(self.k):
                tw.write(tiles(k), shape=(self.h, self.w), dtype=np.float16, tile=(t, t),
                         compression=self.compression, photometric="minisblack", metadata=None, maxworkers=1)
        shutil.rmtree(self._tmp_proba, ignore_errors=True)

    def cleanup(self):
        for p in (self._tmp_proba, self.mask_path, self.proba_path):
            if p is not None:
                _remove(p)


# ====================================================================== predictor

class StreamingPredictor:
    """Band-by-band sliding-window prediction with bounded memory.

    Args:
        model: maps ``(N, C, h, w) float32`` to ``(N, K, h, w)`` logits.
        patch_size, overlap, batch_size, device, precision, tta, channels_last: as
            :class:`~biomedseg.inference.sliding_window.SlidingWindowPredictor`.
        normalizer: maps raw ``(h, w, C)`` rows to ``(C, h, w) float32`` (the run's z-score);
            ``None``: the source already holds normalised values (a ``(C, H, W)`` array).
        channels: the network's input channels (raw rows are conformed: grey <-> RGB).
        prefetch: bands read ahead of the network (and strips queued for the writer).
        skip_blank_std: tiles whose normalised input has a standard deviation below this are not
            run; pixels covered only by such tiles get ``blank_class``. ``None``: run every tile.
        decide: ``(K, n, W) float32`` probabilities -> ``(n, W) uint8`` class indices (default
            argmax); used for per-class thresholds from the post-processing config.
        out_tile: tile side of the written TIFF/zarr (multiple of 16).
        compression: TIFF compression of the outputs (``"zlib"``, ``None``, ...).
        optimize: predict with :func:`~biomedseg.inference.sliding_window.optimize_for_inference`
            (an eval-mode copy; on CPU instance norms as group norms, channels-last).
        compile: also ``torch.compile`` the copy (opt-in: +10-15% on CPU after minutes of
            compilation; worth it for gigapixel images only). Batches are padded to
            ``batch_size`` so that one shape is compiled.
    """

    def __init__(self, model, patch_size: int, overlap: float = 0.25, batch_size: int = 4,
                 device: str | torch.device = "cpu", precision: str = "fp32", tta: bool | str = False,
                 normalizer=None, channels: int | None = None, channels_last: bool = True, prefetch: int = 2,
                 skip_blank_std: float | None = None, blank_class: int = 0,
                 decide: Callable[[np.ndarray], np.ndarray] | None = None, out_tile: int = DEFAULT_OUT_TILE,
                 compression: str | None = "zlib", progress: bool = False, optimize: bool = True,
                 compile: bool = False):
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
        self.compile = bool(compile)
        self.model = (optimize_for_inference(model, device, channels_last, compile=self.compile)
                      if optimize or compile else model)
        self.patch_size = int(patch_size)
        self.overlap = float(overlap)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        self.precision = precision
        self.tta = normalize_tta(tta)
        self.transforms = tta_transforms(self.tta)
        self.normalizer = normalizer
        self.channels = channels
        self.channels_last = channels_last
        self.prefetch = max(1, int(prefetch))
        self.skip_blank_std = skip_blank_std
        self.blank_class = int(blank_class)
        self.decide = decide
        self.out_tile = int(out_tile)
        self.compression = compression
        self.progress = progress
        self._weights = importance_map(self.patch_size, self.device)

    @classmethod
    def from_run(cls, run, tta: bool | str = False, overlap: float | None = None, batch_size: int | None = None,
                 **kwargs) -> "StreamingPredictor":
        """Predictor with the settings of a :class:`~biomedseg.inference.run.LoadedRun`."""
        cfg = run.config
        kwargs.setdefault("blank_class", run.background or 0)
        return cls(run.model, cfg.patch_size, overlap=cfg.overlap if overlap is None else overlap,
                   batch_size=batch_size or max(1, cfg.batch_size // 2), device=run.device, precision=run.precision,
                   tta=tta, normalizer=run.normalizer, channels=run.info["channels"],
                   channels_last=cfg.channels_last, **kwargs)

    # ------------------------------------------------------------------ source handling
    def _open(self, source, level: int) -> TileSource:
        if isinstance(source, np.ndarray) and self.normalizer is None:
            if source.ndim == 2:
                source = source[None]
            return ArraySource(source, axes="CYX")
        return open_source(source, level)

    def _prep(self, raw: np.ndarray) -> np.ndarray:
        """Raw rows ``(n, W, C)`` -> ``(C, n, W) float32`` network input."""
        if raw.dtype == np.bool_:
            raw = raw.astype(np.uint8) * 255
        if self.normalizer is None:
            return np.ascontiguousarray(np.moveaxis(raw, -1, 0), dtype=np.float32)
        from biomedseg.io import conform_channels

        if raw.shape[-1] == 4:
            raw = raw[..., :3]
        elif raw.shape[-1] == 2:
            raw = raw[..., :1]
        if self.channels is not None:
            raw = conform_channels(raw, self.channels)
        return np.ascontiguousarray(self.normalizer(raw), dtype=np.float32)

    # ------------------------------------------------------------------ core
    def run(self, source, on_rows: Callable, level: int = 0, on_start: Callable | None = None) -> StreamResult:
        """Predict ``source`` and call ``on_rows(y0, proba (K, n, W) float32 torch CPU tensor)`` for
        consecutive finished row blocks, top to bottom (image coordinates).
        ``on_start(shape, n_classes)`` is called once before the first block."""
        src = self._open(source, level)
        try:
            return self._run(src, on_rows, on_start)
        finally:
            src.close()

    def _run(self, src: TileSource, on_rows, on_start) -> StreamResult:
        t_start = time.perf_counter()
        H, W = src.shape
        R = self.patch_size
        pt, pb = pad_before_after(H, R)
        pl, pr = pad_before_after(W, R)
        Hp, Wp = H + pt + pb, W + pl + pr
        ys, xs = tile_starts(Hp, R, self.overlap), tile_starts(Wp, R, self.overlap)
        result = StreamResult((H, W))
        stop = threading.Event()
        bands: queue.Queue = queue.Queue(maxsize=self.prefetch)

        def reader():
            try:
                for y in ys:
                    if pt or pb:  # image shorter than a tile: one band, the whole image padded
                        x = self._prep(src.read_rows(0, H))
                    else:
                        x = self._prep(src.read_rows(y, y + R))
                    x = reflect_pad(x, pt, pb, pl, pr)
                    blank = None
                    if self.skip_blank_std is not None:
                        t = torch.from_numpy(x)
                        blank = [bool(t[:, :, xx:xx + R].std() < self.skip_blank_std) for xx in xs]
                    if not _put(bands, (y, torch.from_numpy(x), blank), stop):
                        return
                _put(bands, _END, stop)
            except BaseException as exc:
                _put(bands, _Failure(exc), stop)

        thread = threading.Thread(target=reader, daemon=True, name="biomedseg-reader")
        thread.start()
        try:
            self._consume(bands, stop, ys, xs, (H, W), (pt, pl), (Hp, Wp), on_rows, on_start, result)
        finally:
            stop.set()
            thread.join()
        result.seconds = time.perf_counter() - t_start
        return result

    def _tiles(self, bands, stop, xs):
        """Yield ``(y, x, tile (C, R, R) or None if blank)`` in row-major order."""
        R = self.patch_size
        while True:
            item = _get(bands, stop)
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            y, band, blank = item
            for j, x in enumerate(xs):
                yield y, x, (None if blank is not None and blank[j] else band[:, :, x:x + R])

    @torch.inference_mode()
    def _consume(self, bands, stop, ys, xs, shape, pad, padded, on_rows, on_start, result):
        from tqdm.auto import tqdm

        H, W = shape
        pt, pl = pad
        Hp, Wp = padded
        R, dev = self.patch_size, self.device
        imp = self._weights
        self.model.eval()
        state = {"acc": None, "wsum": None, "base": 0}  # base: padded row of acc[:, 0]
        bar = tqdm(total=len(ys) * len(xs), desc="tiles", unit="tile", disable=not self.progress, leave=False)

        def allocate(k):
            state["acc"] = torch.zeros((k, R, Wp), dtype=torch.float32, device=dev)
            state["wsum"] = torch.zeros((1, R, Wp), dtype=torch.float32, device=dev)
            if on_start is not None:
                on_start((H, W), k)

        def emit_chunk(m):
            """Finalise padded rows [base, base + m) (m <= R) and shift the band up by m."""
            acc, wsum, base = state["acc"], state["wsum"], state["base"]
            lo, hi = max(base, pt), min(base + m, pt + H)
            if hi > lo:
                a = acc[:, lo - base:hi - base, pl:pl + W]
                w = wsum[:, lo - base:hi - base, pl:pl + W]
                if self.skip_blank_std is not None:  # pixels under blank tiles only have no weight
                    empty = w <= 0
                    logits = a / torch.where(empty, torch.ones_like(w), w)
                    if bool(empty.any()):
                        fill = torch.full((a.shape[0], 1, 1), -30.0, device=a.device)
                        fill[min(self.blank_class, a.shape[0] - 1)] = 30.0
                        logits = torch.where(empty, fill, logits)
                else:
                    logits = a / w
                on_rows(lo - pt, torch.softmax(logits, dim=0).float().cpu())
            if m >= R:
                acc.zero_()
                wsum.zero_()
            else:
                acc[:, :R - m] = acc[:, m:].clone()
                acc[:, R - m:] = 0
                wsum[:, :R - m] = wsum[:, m:].clone()
                wsum[:, R - m:] = 0
            state["base"] = base + m

        def emit(n):
            while n > 0:
                m = min(n, R)
                emit_chunk(m)
                n -= m

        def accumulate(y, x, out):
            if state["acc"] is None:
                allocate(out.shape[0])
            if y > state["base"]:
                emit(y - state["base"])
            state["acc"][:, :, x:x + R] += out * imp
            state["wsum"][:, :, x:x + R] += imp

        batch, where = [], []

        def flush():
            if not batch:
                return
            x = torch.stack(batch).to(dev, non_blocking=True)
            n = x.shape[0]
            if self.compile and n < self.batch_size:  # one compiled shape: pad the last batch
                x = torch.cat([x, x[-1:].expand(self.batch_size - n, -1, -1, -1)])
            out = tta_forward(self.model, x, self.transforms, dev, self.precision, self.channels_last)[:n]
            for (y, xx), o in zip(where, out):
                accumulate(y, xx, o)
            result.n_tiles += len(batch)
            bar.update(len(batch))
            batch.clear()
            where.clear()

        for y, x, tile in self._tiles(bands, stop, xs):
            if tile is None:  # blank: contributes nothing
                result.n_skipped += 1
                bar.update(1)
                continue
            batch.append(tile)
            where.append((y, x))
            if len(batch) == self.batch_size:
                flush()
        flush()
        bar.close()
        if state["acc"] is None:  # every tile was blank: the network never ran
            allocate(self._n_classes())
        emit(Hp - state["base"])

    def _n_classes(self) -> int:
        c = self.channels or (len(self.normalizer.mean) if self.normalizer is not None else 1)
        x = torch.zeros((1, c, self.patch_size, self.patch_size), device=self.device)
        return int(self.model(x).shape[1])

    # ------------------------------------------------------------------ front ends
    def predict_proba(self, source, level: int = 0) -> np.ndarray:
        """Whole ``(K, H, W) float32`` probabilities in memory (small images, tests).

        A numpy array is ``(C, H, W)`` normalised input when the predictor has no normaliser
        (like ``SlidingWindowPredictor.predict_proba``), else a raw ``(H, W[, C])`` image."""
        out: dict = {}

        def start(shape, k):
            out["p"] = np.zeros((k, *shape), np.float32)

        def rows(y0, p):
            out["p"][:, y0:y0 + p.shape[1]] = p.numpy()

        self.run(source, rows, level=level, on_start=start)
        return out["p"]

    def _decide(self, proba: torch.Tensor) -> np.ndarray:
        if self.decide is not None:
            return np.asarray(self.decide(proba.numpy()), dtype=np.uint8)
        return argmax0(proba).numpy()

    def predict_to_files(self, source, mask_path: str | os.PathLike, proba_path: str | os.PathLike | None = None,
                         fmt: str = "tiff", level: int = 0, out_tile: int | None = None) -> StreamResult:
        """Predict ``source`` and write the class-index mask (and float16 probabilities) progressively.

        ``fmt``: ``"tiff"`` (tiled TIFF, BigTIFF when large; probabilities ``(K, H, W)`` as K pages)
        or ``"zarr"`` (OME-Zarr groups with one level ``0``; probabilities axes ``c, y, x``).
        Outputs are written to ``<name>.partial.<ext>`` and renamed when complete, probabilities
        first and the mask last (its presence marks the input as done).
        """
        if fmt not in ("tiff", "zarr"):
            raise UserError(f"--format {fmt}: streamed images are written as tiff or zarr")
        mask_path = Path(mask_path)
        proba_path = Path(proba_path) if proba_path is not None else None
        mask_part = partial_path(mask_path)
        proba_part = partial_path(proba_path) if proba_path is not None else None
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        state: dict = {}
        tile = int(out_tile or self.out_tile)
        if tile % 16:
            tile = max(16, (tile // 16) * 16)

        def start(shape, k):
            state["writer"] = _Writer(shape, k, tile, mask_part, fmt, proba_part, fmt, self.compression, stop,
                                      self.prefetch)
            state["writer"].start()

        def rows(y0, p):
            writer = state["writer"]
            item = (y0, self._decide(p), p.numpy().astype(np.float16) if proba_path is not None else None)
            if not _put(writer.q, item, stop) or writer.error is not None:
                raise writer.error or RuntimeError("writer stopped")

        try:
            result = self.run(source, rows, level=level, on_start=start)
            writer = state["writer"]
            _put(writer.q, _END, stop)
            writer.join()
            if writer.error is not None:
                raise writer.error
        except BaseException:
            stop.set()
            writer = state.get("writer")
            if writer is not None:
                writer.join()
                writer.cleanup()
            raise
        if proba_path is not None:
            _finish(proba_part, proba_path)
            result.outputs.append(proba_path)
        _finish(mask_part, mask_path)
        result.outputs.append(mask_path)
        result.seconds = max(result.seconds, 0.0)
        return result
