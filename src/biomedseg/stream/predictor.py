"""Streaming tiled prediction of images larger than memory.

:class:`StreamingPredictor` predicts an image band by band (horizontal strips one tile high):

- the input is read a band at a time from a source: an image file opened once by
  :func:`biomedseg.io.sources.open_source` (tiled/striped TIFF, BigTIFF, OME-TIFF window by
  window, pyramid level selectable; zarr / OME-Zarr; PNG/JPEG/BMP up to the decode cap), or an
  ordinary in-memory array;
- tiles use the same grid, padding, Gaussian weights and test-time augmentation as the in-memory
  :class:`~biomedseg.engine.sliding_window.SlidingWindowPredictor` (MONAI's), so both give the
  same probabilities (to float rounding);
- only one band of accumulated logits and weights (``K x tile x width``) is held; rows no later
  tile touches are finalised (softmax, class decision) and handed to the writer at once;
- the class-index mask (and optionally float16 probabilities) is written progressively as a
  tiled (Big)TIFF or an OME-Zarr, never held whole; outputs go to ``name.partial.*`` first and
  are renamed when complete, so an interrupted run never leaves a file that looks finished;
- reading, the network and writing run in three threads joined by small queues (``prefetch``);
- optionally, blank tiles (standard deviation of the normalised input below ``skip_blank_std``)
  are not run: pixels covered only by blank tiles become ``blank_class``;
- a model's image-level classifier head (``--classifier-head``) runs but is not used: the mask
  is written before the last tile is seen, so streamed images are never gated (the in-memory
  :class:`~biomedseg.engine.sliding_window.SlidingWindowPredictor` provides
  ``last_image_probability`` for ``gating.min_classifier_probability``).

Peak memory is independent of the image height and linear in its width (one band).

The pieces live in :mod:`~biomedseg.stream.sources` (what is read),
:mod:`~biomedseg.engine.band_accumulator` (tile grid, Gaussian blending of one band),
:mod:`~biomedseg.stream.writers` (tiled TIFF / OME-Zarr writers, partial files) and
:mod:`~biomedseg.stream.queues` (thread hand-off); their public names are
re-exported here.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from biomedseg.core.errors import UserError
from biomedseg.engine.band_accumulator import BandAccumulator, TileGrid, argmax0
from biomedseg.engine.defaults import DEFAULT_OVERLAP
from biomedseg.engine.sliding_window import (
    importance_map,
    normalize_tta,
    optimize_for_inference,
    probabilities_of,
    reflect_pad,
    tta_forward,
    tta_transforms,
)
from biomedseg.stream.queues import END, Failure, get_unless_stopped, put_unless_stopped
from biomedseg.stream.sources import ArraySource, TileSource, open_source
from biomedseg.stream.writers import (  # noqa: F401  (BIGTIFF_BYTES re-exported)
    BIGTIFF_BYTES,
    StripWriter,
    ZarrArrayWriter,
    finish_output,
    partial_path,
    remove_output,
)

# names this module defined before it was split (``predict`` imports the private ones)
_Writer, _ZarrArrayWriter, _finish, _remove = StripWriter, ZarrArrayWriter, finish_output, remove_output

DEFAULT_OUT_TILE = 256


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


class StreamingPredictor:
    """Band-by-band sliding-window prediction with bounded memory.

    Args:
        model: maps ``(N, C, h, w) float32`` to ``(N, K, h, w)`` logits.
        patch_size, overlap, batch_size, device, precision, tta, channels_last: as
            :class:`~biomedseg.engine.sliding_window.SlidingWindowPredictor`.
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
        optimize: predict with :func:`~biomedseg.engine.sliding_window.optimize_for_inference`
            (an eval-mode copy; on CPU instance norms as group norms, channels-last).
        compile: also compile the copy (``True`` or a backend name; see
            :class:`~biomedseg.engine.compiled.CompiledForward`: batches are padded to
            ``batch_size`` so that one shape is compiled, eager if compiling fails).
    """

    def __init__(
        self,
        model,
        patch_size: int,
        overlap: float = DEFAULT_OVERLAP,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        tta: bool | str = False,
        normalizer=None,
        channels: int | None = None,
        channels_last: bool = True,
        prefetch: int = 2,
        skip_blank_std: float | None = None,
        blank_class: int = 0,
        decide: Callable[[np.ndarray], np.ndarray] | None = None,
        out_tile: int = DEFAULT_OUT_TILE,
        compression: str | None = "zlib",
        progress: bool = False,
        optimize: bool = True,
        compile: bool | str = False,
    ):
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
        self.model = (
            optimize_for_inference(model, device, channels_last, compile, max(1, int(batch_size)))
            if optimize or compile
            else model
        )
        self.to_proba = probabilities_of(model)
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
    def from_run(
        cls,
        run,
        tta: bool | str = False,
        overlap: float | None = None,
        batch_size: int | None = None,
        model=None,
        **kwargs,
    ) -> "StreamingPredictor":
        """Predictor with the settings of a :class:`~biomedseg.inference.run.LoadedRun`; ``model``:
        an inference copy to use as it is (another predictor's ``.model``), else one of the run's."""
        s = run.settings
        kwargs.setdefault("blank_class", run.background or 0)
        if model is not None:
            kwargs["optimize"] = False
        return cls(
            run.model if model is None else model,
            run.tile_size,
            overlap=s.overlap if overlap is None else overlap,
            batch_size=batch_size or s.batch_size,
            device=run.device,
            precision=run.precision,
            tta=tta,
            normalizer=run.normalizer,
            channels=run.info.channels,
            channels_last=run.channels_last,
            **kwargs,
        )

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
        """Reader thread -> :meth:`_consume` (network, blending) in this thread."""
        t_start = time.perf_counter()
        grid = TileGrid.for_image(src.shape, self.patch_size, self.overlap)
        result = StreamResult((grid.height, grid.width))
        stop = threading.Event()
        bands: queue.Queue = queue.Queue(maxsize=self.prefetch)
        thread = threading.Thread(
            target=self._read_bands, args=(src, grid, bands, stop), daemon=True, name="biomedseg-reader"
        )
        thread.start()
        try:
            self._consume(bands, stop, grid, on_rows, on_start, result)
        finally:
            stop.set()
            thread.join()
        result.seconds = time.perf_counter() - t_start
        return result

    def _read_bands(self, src: TileSource, grid: TileGrid, bands: queue.Queue, stop: threading.Event) -> None:
        """Reader thread body: one :meth:`_read_band` item per tile row, then ``END``; an
        exception is passed on as a ``Failure``."""
        try:
            for y in grid.ys:
                if not put_unless_stopped(bands, self._read_band(src, grid, y), stop):
                    return
            put_unless_stopped(bands, END, stop)
        except BaseException as exc:
            put_unless_stopped(bands, Failure(exc), stop)

    def _read_band(self, src: TileSource, grid: TileGrid, y: int) -> tuple:
        """``(y, band (C, tile, Wp) float32 tensor, blank flags per tile (list of bool) or None)``
        for the tile row starting at padded row ``y``."""
        R = grid.tile
        pt, pb, pl, pr = grid.pad
        if pt or pb:  # image shorter than a tile: one band, the whole image padded
            x = self._prep(src.read_rows(0, grid.height))
        else:
            x = self._prep(src.read_rows(y, y + R))
        x = reflect_pad(x, pt, pb, pl, pr)
        blank = None
        if self.skip_blank_std is not None:
            t = torch.from_numpy(x)
            blank = [bool(t[:, :, xx : xx + R].std() < self.skip_blank_std) for xx in grid.xs]
        return y, torch.from_numpy(x), blank

    def _tiles(self, bands, stop, xs):
        """Yield ``(y, x, tile (C, R, R) or None if blank)`` in row-major order."""
        R = self.patch_size
        while True:
            item = get_unless_stopped(bands, stop)
            if item is END:
                return
            if isinstance(item, Failure):
                raise item.exc
            y, band, blank = item
            for j, x in enumerate(xs):
                yield y, x, (None if blank is not None and blank[j] else band[:, :, x : x + R])

    @torch.inference_mode()
    def _consume(self, bands, stop, grid: TileGrid, on_rows, on_start, result: StreamResult) -> None:
        """Run the network on batches of tiles and blend them into a :class:`BandAccumulator`."""
        from tqdm.auto import tqdm

        self.model.eval()
        accumulator = BandAccumulator(
            grid,
            self._weights,
            self.device,
            on_rows,
            on_start,
            fill_empty=self.skip_blank_std is not None,
            blank_class=self.blank_class,
            to_proba=self.to_proba,
        )
        bar = tqdm(total=grid.n_tiles, desc="tiles", unit="tile", disable=not self.progress, leave=False)
        batch, where = [], []
        for y, x, tile in self._tiles(bands, stop, grid.xs):
            if tile is None:  # blank: contributes nothing
                result.n_skipped += 1
                bar.update(1)
                continue
            batch.append(tile)
            where.append((y, x))
            if len(batch) == self.batch_size:
                self._flush(batch, where, accumulator, result, bar)
        self._flush(batch, where, accumulator, result, bar)
        bar.close()
        if not accumulator.allocated:  # every tile was blank: the network never ran
            accumulator.allocate(self._n_classes())
        accumulator.finish()

    def _flush(self, batch: list, where: list, accumulator: BandAccumulator, result: StreamResult, bar) -> None:
        """Predict the queued ``(C, R, R)`` tiles at padded positions ``where``, add them to the
        accumulator and empty both lists."""
        if not batch:
            return
        dev = self.device
        x = torch.stack(batch).to(dev, non_blocking=True)
        out = tta_forward(self.model, x, self.transforms, dev, self.precision, self.channels_last)
        for (y, xx), o in zip(where, out):
            accumulator.add(y, xx, o)
        result.n_tiles += len(batch)
        bar.update(len(batch))
        batch.clear()
        where.clear()

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
            out["p"][:, y0 : y0 + p.shape[1]] = p.numpy()

        self.run(source, rows, level=level, on_start=start)
        return out["p"]

    def _decide(self, proba: torch.Tensor) -> np.ndarray:
        if self.decide is not None:
            return np.asarray(self.decide(proba.numpy()), dtype=np.uint8)
        return argmax0(proba).numpy()

    def predict_to_files(
        self,
        source,
        mask_path: str | os.PathLike,
        proba_path: str | os.PathLike | None = None,
        fmt: str = "tiff",
        level: int = 0,
        out_tile: int | None = None,
        pixel_size=None,
        pyramid_above: int | None = None,
        mask_encoder: Callable[[np.ndarray], np.ndarray] | None = None,
        mask_sink=None,
    ) -> StreamResult:
        """Predict ``source`` and write the class-index mask (and float16 probabilities) progressively.

        ``fmt``: ``"tiff"`` (tiled TIFF, BigTIFF when large; probabilities ``(K, H, W)`` as K pages)
        or ``"zarr"`` (multiscale OME-Zarr groups, level ``0`` full size; probabilities axes ``c, y, x``).
        Outputs are written to ``<name>.partial.<ext>`` and renamed when complete, probabilities
        first and the mask last (its presence marks the input as done). ``pixel_size``: ``(y, x)`` µm
        written into the OME metadata; outputs above ``pyramid_above`` pixels (default
        :data:`~biomedseg.io.ome.PYRAMID_ABOVE_PIXELS`) get sub-resolution levels.
        ``mask_encoder``: ``(n, W) uint8`` class indices -> the ``(n, W) uint8`` values written
        (``--mask-format``). ``mask_sink``: gets the class indices too (``.add_rows(y0, rows)``),
        and ``.finish()`` (its ``.path`` is added to the outputs) before the mask is complete.
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
        tile = self._output_tile(out_tile)

        def start(shape, k):
            state["writer"] = StripWriter(
                shape,
                k,
                tile,
                mask_part,
                fmt,
                proba_part,
                fmt,
                self.compression,
                stop,
                self.prefetch,
                pixel_size=pixel_size,
                pyramid_above=pyramid_above,
            )
            state["writer"].start()

        def rows(y0, p):
            writer = state["writer"]
            mask = self._decide(p)
            if mask_sink is not None:
                mask_sink.add_rows(y0, mask)
            if mask_encoder is not None:
                mask = mask_encoder(mask)
            item = (y0, mask, p.numpy().astype(np.float16) if proba_path is not None else None)
            if not put_unless_stopped(writer.q, item, stop) or writer.error is not None:
                raise writer.error or RuntimeError("writer stopped")

        try:
            result = self.run(source, rows, level=level, on_start=start)
            writer = state["writer"]
            put_unless_stopped(writer.q, END, stop)
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
        return _finish_outputs(result, (proba_part, proba_path), mask_sink, (mask_part, mask_path))

    def _output_tile(self, out_tile: int | None) -> int:
        """Tile side of written images: ``out_tile`` (else the predictor's), a multiple of 16."""
        tile = int(out_tile or self.out_tile)
        if tile % 16:
            tile = max(16, (tile // 16) * 16)
        return tile


def _finish_outputs(result: StreamResult, proba: tuple, mask_sink, mask: tuple) -> StreamResult:
    """Rename the complete outputs (``(partial, final)`` pairs): probabilities first, the sink's file, the
    mask last (its presence marks the input as done)."""
    if proba[1] is not None:
        finish_output(*proba)
        result.outputs.append(proba[1])
    if mask_sink is not None:
        mask_sink.finish()
        result.outputs.append(mask_sink.path)
    finish_output(*mask)
    result.outputs.append(mask[1])
    result.seconds = max(result.seconds, 0.0)
    return result
