"""``biomedseg export RUN --format onnx|torchscript|bioimageio --out PATH``.

Writes the run's network with the metadata document of
:mod:`~biomedseg.inference.exported.format` (everything ``predict`` needs), then runs the parity
check of :mod:`~biomedseg.export.parity` on the file as written (loaded back as
``predict`` loads it): only when it passes is the file renamed to ``PATH``, and the numbers are
stored beside it in ``PATH.parity.json``. A failed check is a one-line UserError and leaves
nothing behind.

Formats: ``onnx`` (``.onnx``, run by ONNX Runtime), ``torchscript`` (``.pt``, run by PyTorch
without biomedseg's model code), ``bioimageio`` (``.zip``: a bioimage.io model package with
both weights, see :mod:`~biomedseg.export.bioimageio`; both are checked).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from biomedseg.core.errors import UserError
from biomedseg.inference.exported.options import DEFAULT_LICENSE, FORMATS, SUFFIXES
from biomedseg.runs.layout import CHECKPOINT_NAMES

log = logging.getLogger("biomedseg")

#: engines the parity check runs each format's file with
PARITY_ENGINES = {"onnx": ("onnxruntime",), "torchscript": ("torch",), "bioimageio": ("onnxruntime", "torch")}
PARITY_SUFFIX = ".parity.json"


@dataclass
class ExportResult:
    path: Path
    format: str
    parity_path: Path
    parity: list = field(default_factory=list)  # ParityReport per engine
    metadata: dict = field(default_factory=dict)


def parity_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARITY_SUFFIX)


def _check_out(fmt: str, out, overwrite: bool, checkpoint: str) -> Path:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if checkpoint not in CHECKPOINT_NAMES:
        raise UserError(f"--checkpoint {checkpoint}: choose one of {', '.join(CHECKPOINT_NAMES)}")
    out = Path(out)
    if out.suffix.lower() != SUFFIXES[fmt]:
        raise UserError(f"{out}: a {fmt} export is named *{SUFFIXES[fmt]} (predict recognises it by that)")
    if out.is_dir():
        raise UserError(f"{out}: is a folder")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; use --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: no such folder")
    return out


def _write(fmt: str, loaded, post, part: Path, images, options: dict) -> dict:
    """Write the export of ``loaded`` to ``part``; returns its metadata document."""
    from biomedseg.inference.exported import graph
    from biomedseg.inference.exported.format import build_metadata, metadata_json

    channels, size = loaded.info.channels, loaded.tile_size
    checkpoint = options.get("checkpoint", "best")
    if fmt == "torchscript":
        module, section = graph.torchscript_module(loaded.model, channels, size)
        doc = build_metadata(loaded, post, section, checkpoint)
        graph.save_torchscript(module, part, metadata_json(doc))
        return doc
    proto, section = graph.onnx_model(loaded.model, channels, size)
    if fmt == "onnx":
        import onnx

        doc = build_metadata(loaded, post, section, checkpoint)
        if options.get("int8"):
            proto, doc = _quantize(loaded, proto, doc, part, options["int8"])
        graph.set_onnx_metadata(proto, metadata_json(doc))
        onnx.save_model(proto, str(part))
        return doc
    from biomedseg.export.bioimageio import write_package

    module, ts_section = graph.torchscript_module(loaded.model, channels, size)
    doc = build_metadata(loaded, post, {**section, **ts_section}, checkpoint)
    write_package(part, loaded, doc, proto, module, images, options)
    return doc


def _calibration(loaded, int8) -> tuple[list, str]:
    """``(tiles, description)`` to calibrate ``--int8`` with (before anything else: its errors first)."""
    from biomedseg.export.quantize import calibration_images, calibration_tiles

    images, description = calibration_images(loaded, int8)
    return calibration_tiles(loaded, images, int8.max_tiles, int8.seed), description


def _quantize(loaded, proto, doc: dict, part: Path, int8):
    """The int8 model of ``proto`` and its metadata (:mod:`~biomedseg.export.quantize`); ``int8``:
    ``(tiles, description)`` of :func:`_calibration`."""
    from biomedseg.export.quantize import quantization_section, quantize_onnx

    tiles, description = int8
    quantized = quantize_onnx(proto, part, tiles)
    section = quantization_section(description, len(tiles), int(loaded.tile_size))
    doc = {**doc, "int8": True, "quantization": section, "network": {**doc["network"], "dtype": "int8 (QDQ)"}}
    return quantized, doc


def _int8_limits() -> dict:
    from biomedseg.export.quantize import INT8_MIN_AGREEMENT

    return {"max_abs_diff": 1.0, "min_agreement": INT8_MIN_AGREEMENT}


def export_run(
    run,
    fmt: str,
    out,
    *,
    checkpoint: str = "best",
    overwrite: bool = False,
    license: str = DEFAULT_LICENSE,
    authors: list[str] | None = None,
    int8=None,
) -> ExportResult:
    """Export ``run`` as ``fmt`` to ``out`` with the built-in parity check (module docstring).
    ``int8``: an :class:`~biomedseg.export.quantize.Int8Options` to quantise (ONNX only)."""
    from biomedseg.export.parity import check_parity, validation_images
    from biomedseg.inference.exported.engines import open_exported
    from biomedseg.inference.run import load_run
    from biomedseg.io.writers import write_json

    out = _check_out(fmt, out, overwrite, checkpoint)
    if int8 is not None and fmt != "onnx":
        raise UserError(f"--int8: only with --format onnx (not {fmt})")
    loaded = load_run(run, checkpoint=checkpoint, device="cpu", precision="fp32")
    post = loaded.postprocess()
    calibration = _calibration(loaded, int8) if int8 is not None else None
    images, description = validation_images(loaded)
    part = out.with_name(f"{out.stem}.partial{out.suffix}")
    try:
        options = {"checkpoint": checkpoint, "license": license, "authors": authors or [], "int8": calibration}
        doc = _write(fmt, loaded, post, part, images, options)
        limits = _int8_limits() if int8 is not None else {}
        reports = [
            check_parity(loaded, open_exported(part, device="cpu", engine=engine), images, description, **limits)
            for engine in PARITY_ENGINES[fmt]
        ]
        failed = [r for r in reports if not r.passed]
        if failed:
            raise UserError(f"{out}: parity check failed, nothing written ({failed[0].summary()})")
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    result = ExportResult(out, fmt, parity_path(out), reports, doc)
    write_json(
        result.parity_path,
        {
            "export": out.name,
            "format": fmt,
            "run": doc["source"]["run"],
            "checkpoint": checkpoint,
            "int8": int8 is not None,
            "reports": [r.to_json() for r in reports],
        },
    )
    return result
