"""``biomedseg.predict(...)``: masks for new images of any size.

For each input image: read, conform channels, normalise as in training, sliding-window
inference with Gaussian blending, post-processing (``RUN/postprocess.yaml`` when present), then
write (atomically) ``<stem>.png`` (class-index mask; ``.tif`` above ``tiff_above`` pixels or with
``output_format="tiff"``, an OME-Zarr ``<stem>.zarr`` with ``"zarr"``), optionally
``<stem>_overlay.png``, ``<stem>_proba.tif`` (float16 ``(K, H, W)``) and
``<stem>_instances.tif`` (int32 instance labels), ``<stem>.geojson`` (``geojson``; masks in other
encodings with ``mask_format``: :mod:`~biomedseg.inference.predict.mask_outputs`). The mask is written last:
its presence marks the input as done, and finished inputs are skipped when a run is repeated. TIFF
outputs are OME-TIFF and zarr outputs OME-Zarr, carrying the input's physical pixel size when it has
one (:func:`biomedseg.io.pixel_size.pixel_size`); outputs above
:data:`~biomedseg.io.ome.PYRAMID_ABOVE_PIXELS` pixels get tiled sub-resolution levels.

Huge inputs (more than ``STREAM_ABOVE_PIXELS`` pixels, tiled TIFFs above
``TILED_STREAM_ABOVE_PIXELS``, a pyramid level > 0, zarr inputs) go through the
:class:`~biomedseg.stream.predictor.StreamingPredictor`: read, predicted and written band by
band to a tiled TIFF or OME-Zarr (``<stem>.partial.*`` until complete). Only per-pixel
post-processing (thresholds) applies to them; overlays, instances and RLE are skipped, and no
empty-mask gate (in particular not the classifier head's ``min_classifier_probability``: the
mask is written before the last tile has been seen).

``rle=PATH`` writes a Kaggle-style CSV: ``img,pixels`` (one row per image, all foreground), or
``img,class,pixels`` (one row per image and foreground class) with several foreground classes,
or ``ImageId,EncodedPixels`` (one row per object) with ``instances=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.core.labels import class_argmax
from biomedseg.inference.predict.core import warn_if_classifier_gate_unusable
from biomedseg.inference.predict.hooks import PredictHooks
from biomedseg.inference.predict.options import PredictOptions
from biomedseg.inference.predict.outputs import (
    OUTPUT_FORMATS,
    STREAM_ABOVE_PIXELS,
    TILED_STREAM_ABOVE_PIXELS,
    check_not_input,
    collect_inputs,
    existing_mask,
    mask_path_for,
    output_stem,
    remove_other_formats,
    write_zarr_mask,
)
from biomedseg.inference.predict.rle import rle_rows_for, rle_rows_from_outputs, write_rle

log = logging.getLogger("biomedseg")


@dataclass
class PredictSummary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    streamed: list[Path] = field(default_factory=list)
    rle: Path | None = None
    #: ``predictions.csv`` (written by the hooks of :mod:`biomedseg.trust.predictions`), inputs flagged
    #: as unlike the training data
    predictions: Path | None = None
    flagged: list[Path] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # the rows of predictions.csv (from the hooks)
    # distributed prediction: worker process ids, torch threads of the tasks, network runtimes
    workers: list[int] = field(default_factory=list)
    task_threads: list[int] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)

    def merge(self, other: "PredictSummary") -> None:
        for name in ("done", "skipped", "failed", "outputs", "streamed", "flagged", "rows"):
            getattr(self, name).extend(getattr(other, name))


@dataclass
class Prepared:
    """A loaded run made ready to predict files with ``options``: the predictor (the network's
    inference copy, compiled or not) built once, the post-processing, the output encodings."""

    run: object  # a LoadedRun (or ExportedRun)
    options: PredictOptions
    predictor: object
    post: object  # PostprocessConfig or None
    encoding: object  # MaskEncoding
    object_type: str | None  # GeoJSON object type or None
    temperature: float = 1.0  # calibration temperature already in ``predictor.to_proba``
    hooks: PredictHooks = field(default_factory=PredictHooks)


def predict(run, inputs, out, options: PredictOptions | None = None, hooks=None, **keywords) -> PredictSummary:
    """Predict every image of ``inputs`` (files, folders, globs, ``.zarr`` folders) with the run ``run``
    (a run, CV or ensemble folder, a loaded run, or a file written by ``biomedseg export``: ``.onnx``,
    TorchScript ``.pt``, bioimage.io ``.zip``).

    The options: a :class:`~biomedseg.inference.predict.options.PredictOptions`, or its fields as
    keywords (both: the keywords replace the object's fields):

        tta: ``False`` | ``True``/``"flips"`` | ``"flips+rot90"``.
        postprocess: apply ``RUN/postprocess.yaml`` when the run has one.
        uncertainty: also write ``<stem>_uncertainty.tif`` (with the trust hooks of ``biomedseg.predict``).
        rle: write a Kaggle RLE CSV here (see module docstring).
        instances: also write ``<stem>_instances.tif`` (int32 labels; watershed where configured).
        output_format: ``"png"`` (default; ``.tif`` for masks above ``TIFF_ABOVE_PIXELS``),
            ``"tiff"`` or ``"zarr"``; streamed inputs are written as tiff unless ``"zarr"``.
        level: pyramid level of TIFF/OME-Zarr inputs (0 = full resolution; > 0 streams).
        stream: force (``True``) or forbid (``False``) streaming; ``None`` decides by size.
        batch_size: tiles per forward pass (default: the run's).
        skip_blank_std: streamed inputs: tiles whose normalised standard deviation is below this
            are not run (predicted background).
        mask_format: ``index`` (default) | ``binary`` | ``palette`` | ``rgb`` | ``auto`` (the training
            masks' encoding); one-channel outputs (zarr, streamed) keep class indices for ``rgb``/``palette``.
        geojson: also write ``<stem>.geojson`` (``True``: QuPath annotations; ``"detection"``).
        engine: ``"torch"``, ``"onnxruntime"`` or ``"auto"`` (see
            :mod:`biomedseg.inference.exported.engines`; ``None``: torch for a run folder, the
            file's own runtime for an exported file); only the network call changes.
        compile: ``"auto"`` (compile the network with ``torch.compile`` when the inputs still to
            predict need at least ``COMPILE_MIN_TILES`` tile forwards, on a CPU with a C++
            compiler), ``"on"``, ``"off"`` (or a ``torch.compile`` backend name).
        threads: intra-op threads (default: the cores available to this process; never the
            training config's ``num_threads``).

    ``hooks``: ``make(loaded_run, options) -> PredictHooks`` (:mod:`.hooks`; ``biomedseg.predict``
    passes the trust rows of :mod:`biomedseg.trust.predictions`). Any exception on one input (an
    unreadable file, a write error, running out of memory) is reported in one line naming the input
    (the traceback at debug level) and the others go on; outputs are written atomically. Returns a
    :class:`PredictSummary`; the CLI exits non-zero when ``failed`` is not empty.
    """
    from biomedseg.inference.exported.engines import open_model_source
    from biomedseg.inference.run import LoadedRun
    from biomedseg.runtime.device import configure_threads

    options = PredictOptions.of(options, **keywords)
    if options.output_format is not None and options.output_format not in OUTPUT_FORMATS:
        raise UserError(f"--format {options.output_format}: choose one of {', '.join(OUTPUT_FORMATS)}")
    files = collect_inputs(inputs)
    configure_threads(options.threads)  # before an ONNX Runtime session takes torch's count
    loaded = (
        run
        if isinstance(run, LoadedRun)
        else open_model_source(run, device=options.device, engine=options.engine, checkpoint=options.checkpoint)
    )
    out = Path(out)
    prepared = prepare(loaded, options, files, out, hooks)
    return predict_files(prepared, files, out)


def prepare(loaded, options: PredictOptions, files: list[Path], out: Path, hooks=None) -> Prepared:
    """``loaded`` made ready for ``options`` (``files`` and ``out``: what ``compile="auto"`` counts;
    ``hooks``: as in :func:`predict`). The calibration temperature of ``postprocess.yaml`` goes into the
    predictor's probabilities (``--no-postprocess``: none)."""
    from biomedseg.engine.sliding_window import probabilities_of
    from biomedseg.inference.predict.mask_outputs import geojson_object_type, mask_encoding_for

    encoding, object_type = mask_encoding_for(loaded, options.mask_format), geojson_object_type(options.geojson)
    post = loaded.postprocess() if options.postprocess else None
    temperature = post.temperature if post is not None else 1.0
    if post is not None and post.is_identity:
        post = None
    compiled = _resolve_compile(options.compile, loaded, files, out, options.tta, options.level, options.overwrite)
    predictor = loaded.predictor(tta=options.tta, batch_size=options.batch_size, compile=compiled)
    if temperature != 1.0:
        predictor.to_proba = probabilities_of(loaded.model, temperature)
    warn_if_classifier_gate_unusable(post, predictor)
    made = hooks(loaded, options) if hooks is not None else PredictHooks()
    return Prepared(loaded, options, predictor, post, encoding, object_type, temperature, made)


def predict_files(prepared: Prepared, files: list[Path], out: Path) -> PredictSummary:
    """Predict ``files`` into ``out`` with a prepared run; one failed input is reported and skipped."""
    from tqdm.auto import tqdm

    options = prepared.options
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    rle_rows: list[tuple] = []
    for path in tqdm(files, desc="predicting", unit="img", disable=True if (options.quiet or len(files) < 2) else None):
        written: list[Path] = []
        try:
            rle_rows.extend(_predict_one(prepared, path, out, summary, written))
            summary.outputs.extend(written)
        except Exception as exc:  # noqa: BLE001 - one input's failure of any kind: reported, the batch goes on
            _failed(summary, path, exc, written)
    if options.rle is not None:
        summary.rle = write_rle(options.rle, rle_rows, prepared.run, options.instances)
    prepared.hooks.finish(prepared, files, out, summary)
    return summary


def _failed(summary: PredictSummary, path: Path, exc: Exception, written: list[Path]) -> None:
    """Record and log (one line naming the input; the traceback at debug level) a failed input,
    and remove the outputs already written for it (its mask, written last, never is)."""
    if isinstance(exc, UserError):
        message = str(exc)
    else:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        message = f"{path}: {type(exc).__name__}" + (f": {first}" if first else "")
    summary.failed.append((path, message))
    log.error("%s", message)
    log.debug("%s: traceback", path, exc_info=exc)
    for p in written:
        try:
            p.unlink()
        except OSError:
            pass


def wants_streaming(path: Path, level: int = 0) -> tuple[bool, tuple[int, int] | None]:
    """``(stream?, (H, W) or None)`` for an input, from its header (no decode)."""
    from biomedseg.io.sources import open_source

    if path.is_dir():
        return True, None
    try:
        with open_source(path) as src:
            return _streams(src, level), (None if src.kind == "tiff" and level > 0 else src.shape)
    except UserError:
        return False, None  # reading it reports the problem


def _streams(src, level: int) -> bool:
    """Whether the opened source ``src`` is predicted band by band (see the module docstring)."""
    if src.kind == "zarr" or (src.kind == "tiff" and level > 0):
        return True
    h, w = src.shape
    return h * w > STREAM_ABOVE_PIXELS or (src.tile is not None and h * w > TILED_STREAM_ABOVE_PIXELS)


def _resolve_compile(mode, run, files: list[Path], out: Path, tta, level: int, overwrite: bool) -> bool | str:
    """``compile`` for :func:`predict`; ``auto`` counts the tile forwards of the inputs still to do."""
    from biomedseg.engine.compiled import normalize_compile, resolve_compile
    from biomedseg.engine.sliding_window import count_tile_forwards
    from biomedseg.inference.exported.engines import ExportedNetwork
    from biomedseg.io.sources import open_source

    if isinstance(run.model, ExportedNetwork):  # already a compiled graph (ONNX Runtime, TorchScript)
        return False
    if normalize_compile(mode) != "auto":
        return resolve_compile(mode, 0, run.device)
    shapes = []
    for path in files:
        if overwrite or existing_mask(out, output_stem(path)) is None:
            try:
                with open_source(path, level) as src:  # the header only
                    src.check_readable()
                    shapes.append(src.shape)
            except (UserError, OSError, ValueError):
                pass  # unreadable: reported when it is predicted
    n = count_tile_forwards(shapes, run.tile_size, run.settings.overlap, tta)
    compiled = resolve_compile(mode, n, run.device)
    if compiled:
        log.info("compiling the network for %d tile forwards (--compile off skips it)", n)
    return compiled


def _predict_one(prepared: Prepared, path: Path, out: Path, summary: PredictSummary, written: list[Path]) -> list:
    """Predict one input; its outputs are appended to ``written`` as they are written (the mask
    last); returns its RLE rows."""
    from biomedseg.io.sources import open_source

    run, options, predictor = prepared.run, prepared.options, prepared.predictor
    want_rle = options.rle is not None
    stem = output_stem(path)
    if existing_mask(out, stem) is not None and not options.overwrite:
        summary.skipped.append(path)
        return rle_rows_from_outputs(out, stem, run, options.instances, prepared.encoding) if want_rle else []
    with open_source(path) as src:  # opened once: the header decides streaming, else it is read whole
        src.check_readable()
        streamed = _streams(src, options.level) if options.stream is None else bool(options.stream)
        if not streamed:
            image, px = src.read_all(), src.pixel_size
    if streamed:
        written.extend(_predict_streamed(prepared, path, out, summary))
        return []
    proba = prepared.hooks.probabilities(prepared, path, image, px)
    if prepared.post is not None or options.instances:
        from biomedseg.postprocess.ops import apply_postprocess

        mask, inst = apply_postprocess(
            proba,
            prepared.post,
            run.classes,
            run.background,
            instances=options.instances or None,
            image_probability=getattr(predictor, "last_image_probability", None),
        )
    else:
        mask, inst = class_argmax(proba), None
    labels = _write_extras(prepared, path, out, stem, image, proba, mask, inst, px, written)
    rows = rle_rows_for(stem, mask, labels, run, options.instances) if want_rle else []
    written.extend(prepared.hooks.extras(prepared, path, out, stem, image, px, proba, mask))
    # the mask is written last: its presence marks the input as done when a run is resumed
    written.append(_write_mask(prepared, path, out, stem, mask, px))
    summary.done.append(path)
    return rows


def _write_extras(
    prepared: Prepared, path: Path, out: Path, stem: str, image, proba, mask, inst, px, written: list[Path]
):
    """The overlay, probabilities, instances and GeoJSON of one input (as asked); returns the
    instance labels (``None`` without ``instances``)."""
    from biomedseg.inference.predict.mask_outputs import write_geojson
    from biomedseg.io import write_png
    from biomedseg.io.ome import write_ome_tiff

    run, options = prepared.run, prepared.options
    if options.overlays:
        from biomedseg.core.render import class_overlay

        ov = out / f"{stem}_overlay.png"
        write_png(ov, class_overlay(image, mask, background=run.background), preview=True)
        written.append(ov)
    if options.probabilities:
        pp = out / f"{stem}_proba.tif"
        write_ome_tiff(pp, proba.astype(np.float16), px)
        written.append(pp)
    labels = None
    if options.instances:
        from biomedseg.postprocess.ops import combine_instances

        labels = combine_instances(inst or {}, mask.shape)
        ip = out / f"{stem}_instances.tif"
        write_ome_tiff(ip, labels, px)
        written.append(ip)
    if prepared.object_type is not None:
        written.append(write_geojson(out / f"{stem}.geojson", mask, run, prepared.object_type))
    return labels


def _write_mask(prepared: Prepared, path: Path, out: Path, stem: str, mask, px) -> Path:
    from biomedseg.inference.predict.mask_outputs import one_channel
    from biomedseg.io.mask_encoding import write_mask
    from biomedseg.io.ome import write_ome_tiff

    encoding = prepared.encoding
    mask_path = mask_path_for(out, path, mask.size, prepared.options.output_format)
    check_not_input(mask_path, path)
    remove_other_formats(out, stem, mask_path, path)
    if mask_path.suffix == ".zarr":
        write_zarr_mask(mask_path, one_channel(encoding, path, "OME-Zarr").encode(mask), px)
    elif mask_path.suffix == ".tif" and encoding.kind != "palette":
        stored = encoding.encode(mask)
        write_ome_tiff(mask_path, stored, px, axes="YXS" if stored.ndim == 3 else None)
    else:
        write_mask(mask_path, mask, encoding)
    return mask_path


def _streamed_decider(prepared: Prepared, path: Path):
    """The per-pixel decision of a streamed input: the per-class thresholds of ``postprocess.yaml``
    (``None``: argmax)."""
    from biomedseg.postprocess.ops import decide, resolve_classes

    post, run = prepared.post, prepared.run
    if post is None:
        return None
    if post.needs_whole_image:
        log.warning(
            "%s: streamed (large input): only the per-class thresholds of postprocess.yaml apply "
            "(object and gating steps need the whole image)",
            path,
        )
    thr = {c: s.threshold for c, s in resolve_classes(post, len(run.classes), run.classes).items()}
    if not any(t is not None for t in thr.values()):
        return None
    bg = run.background

    def decider(p):
        return decide(p, thr, bg)

    return decider


def _predict_streamed(prepared: Prepared, path: Path, out: Path, summary: PredictSummary) -> list[Path]:
    from biomedseg.inference.predict.mask_outputs import streamed_extras
    from biomedseg.stream.predictor import StreamingPredictor, open_source

    run, o = prepared.run, prepared.options
    stem = output_stem(path)
    fmt = "zarr" if o.output_format == "zarr" else "tiff"
    if o.output_format == "png":
        log.info("%s: streamed (large input); writing a tiled TIFF instead of PNG", path)
    skipped = [
        name for name, on in (("overlay", o.overlays), ("instances", o.instances), ("RLE", o.rle is not None)) if on
    ]
    if skipped:
        log.info("%s: streamed (large input): no %s", path, ", ".join(skipped))
    sp = StreamingPredictor.from_run(
        run,
        tta=o.tta,
        batch_size=o.batch_size,
        skip_blank_std=o.skip_blank_std,
        decide=prepared.hooks.streamed_decider(prepared, path, out, stem, _streamed_decider(prepared, path)),
        model=prepared.predictor.model,
    )  # the inference copy, compiled or not
    sp.to_proba = prepared.predictor.to_proba  # the calibration temperature
    with open_source(path, o.level) as src:  # the output keeps the input's tiling when it has one
        tile = src.tile[-1] if src.tile and src.tile[-1] % 16 == 0 and 64 <= src.tile[-1] <= 2048 else None
        ext = ".zarr" if fmt == "zarr" else ".tif"
        mask_path = out / f"{stem}{ext}"
        check_not_input(mask_path, path)
        proba_path = out / f"{stem}_proba{ext}" if o.probabilities else None
        with streamed_extras(
            run, path, out / f"{stem}.geojson", src, o.level, prepared.encoding, prepared.object_type
        ) as extras:
            res = sp.predict_to_files(
                src,
                mask_path,
                proba_path,
                fmt=fmt,
                level=o.level,
                out_tile=tile,
                pixel_size=src.pixel_size,
                mask_encoder=extras.encoder,
                mask_sink=extras.sink,
            )
    remove_other_formats(out, stem, mask_path, path)
    res.outputs.extend(prepared.hooks.streamed(prepared, path, out, stem))
    log.info(
        "%s: %dx%d streamed in %.1f s (%.2f MPix/s, %d tiles, %d blank)",
        path,
        res.shape[1],
        res.shape[0],
        res.seconds,
        res.mpix_per_s,
        res.n_tiles,
        res.n_skipped,
    )
    summary.done.append(path)
    summary.streamed.append(path)
    return res.outputs
