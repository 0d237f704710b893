"""Choices and defaults of ``biomedseg export`` and ``predict --engine``, defined once (no torch
import: the command line reads them)."""

from __future__ import annotations

#: export formats and the file suffix each is written (and recognised by ``predict``) with
FORMATS = ("onnx", "torchscript", "bioimageio")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "bioimageio": ".zip"}
#: network runtimes of ``predict --engine``
ENGINES = ("torch", "onnxruntime", "auto")
DEFAULT_ENGINE = "torch"
#: licence of a bioimage.io package unless ``--license`` says otherwise (an SPDX id)
DEFAULT_LICENSE = "CC-BY-4.0"
