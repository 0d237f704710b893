"""Choices and defaults of ``biomedseg export`` and ``predict --engine``, defined once (no torch
import: the command line reads them)."""

from __future__ import annotations

#: export formats and the file suffix each is written (and recognised by ``predict``) with
FORMATS = ("onnx", "torchscript", "bioimageio")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "bioimageio": ".zip"}
#: network runtimes of ``predict --engine``; a run folder runs on ``DEFAULT_ENGINE`` unless told,
#: an exported file on its own runtime (``auto``: ONNX Runtime for .onnx, PyTorch for .pt, the
#: faster of the two weights of a bioimage.io package)
ENGINES = ("torch", "onnxruntime", "auto")
DEFAULT_ENGINE = "torch"
DEFAULT_EXPORT_ENGINE = "auto"
#: licence of a bioimage.io package unless ``--license`` says otherwise (an SPDX id)
DEFAULT_LICENSE = "CC-BY-4.0"
