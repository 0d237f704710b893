"""Run an exported network where predict expects a PyTorch model: ONNX Runtime or TorchScript.

:class:`ExportedNetwork` is the ``model`` that
:class:`~biomedseg.engine.sliding_window.SlidingWindowPredictor` and
:class:`~biomedseg.stream.predictor.StreamingPredictor` call on batches of tiles
``(N, C, h, w) float32 -> (N, K, h, w)`` logits; only the network call changes, the tiling,
Gaussian blending, TTA, streaming and post-processing stay PyTorch/numpy code (torch is still
imported for them, also with ONNX Runtime). A network exported with the classifier head is an
:class:`ExportedNetworkWithHead` (a :class:`~biomedseg.models.heads.ClassifierModel`), so the
predictors read its image-level logits as they do for a PyTorch model.

:func:`open_model_source` is what ``predict`` calls with its first argument: a run folder
(``--engine torch|onnxruntime|auto``), an ``.onnx`` file (ONNX Runtime), a TorchScript ``.pt``
file (PyTorch) or a bioimage.io package ``.zip`` (either of its weights).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
import zipfile
from pathlib import Path

import torch
from torch import nn

from biomedseg.core.errors import UserError
from biomedseg.inference.exported.options import DEFAULT_ENGINE, DEFAULT_EXPORT_ENGINE, ENGINES, SUFFIXES
from biomedseg.models.heads import ClassifierModel

log = logging.getLogger("biomedseg")

EXPORT_SUFFIXES = tuple(SUFFIXES.values())


class OrtRunner:
    """An ONNX Runtime session called with torch tensors: ``x -> (logits, image_logit or None)``."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor):
        outs = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})
        head = torch.from_numpy(outs[1]) if len(outs) > 1 else None
        return torch.from_numpy(outs[0]).to(x.device), head

    def __deepcopy__(self, memo):  # a session is not copyable, and holds no state to protect
        return self


class ScriptRunner:
    """A TorchScript module called as ``x -> (logits, image_logit or None)``."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x: torch.Tensor):
        out = self.module(x.contiguous())
        return (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)

    def __deepcopy__(self, memo):
        return self


class ExportedNetwork(nn.Module):
    """An exported network as a PyTorch module: ``forward(x) -> logits`` (see module docstring)."""

    def __init__(self, runner, engine: str):
        super().__init__()
        self.runner = runner
        self.engine = engine
        self.class_logits: torch.Tensor | None = None

    @torch.compiler.disable  # the graph is already compiled (ONNX Runtime / TorchScript); never trace into it
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, head = self.runner(x)
        self.class_logits = head[:, 0] if head is not None else None
        return logits


class ExportedNetworkWithHead(ExportedNetwork, ClassifierModel):
    """:class:`ExportedNetwork` of a graph with the ``image_logit`` output (classifier head)."""

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        self.forward(x)
        return self.class_logits


def network(runner, engine: str, has_head: bool) -> ExportedNetwork:
    return (ExportedNetworkWithHead if has_head else ExportedNetwork)(runner, engine).eval()


# ---------------------------------------------------------------- ONNX Runtime


def ort_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session of ``model`` (a file path or serialised bytes), with as many
    intra-op threads as PyTorch uses (``configure_threads``), all graph optimisations on."""
    from biomedseg.inference.exported.graph import require

    require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise UserError(
            f"{model if not isinstance(model, bytes) else 'ONNX model'}: ONNX Runtime cannot load it "
            f"({str(exc).splitlines()[0][:160]})"
        ) from None


def ort_network(model) -> ExportedNetwork:
    """:class:`ExportedNetwork` running ``model`` (path or bytes) in ONNX Runtime."""
    session = ort_session(model)
    return network(OrtRunner(session), "onnxruntime", len(session.get_outputs()) > 1)


def ort_metadata(session) -> str | None:
    from biomedseg.inference.exported.graph import METADATA_KEY

    return session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)


def script_network(source, device) -> tuple[ExportedNetwork, str | None]:
    """``(network, metadata)`` of a TorchScript file or file object."""
    from biomedseg.inference.exported.graph import load_torchscript

    module, meta = load_torchscript(source, device)
    has_head = "image_logit" in _script_outputs(meta)
    return network(ScriptRunner(module), "torch", has_head), meta


def _script_outputs(meta: str | None) -> list[str]:
    import json

    try:
        return list(json.loads(meta)["network"]["outputs"]) if meta else []
    except (ValueError, KeyError, TypeError):
        return []


# ---------------------------------------------------------------- opening what predict is given


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    return engine


def is_export(path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in EXPORT_SUFFIXES


def open_model_source(source, device: str = "auto", engine: str | None = None, checkpoint: str = "best"):
    """What predict runs: a :class:`~biomedseg.inference.run.LoadedRun` of a run folder (its
    ``checkpoint``) on ``engine`` (default ``DEFAULT_ENGINE``), or an
    :class:`~biomedseg.inference.exported.format.ExportedRun` of an exported file (default: the
    file's own runtime)."""
    from biomedseg.inference.run import load_run

    if engine is not None:
        check_engine(engine)
    if Path(source).suffix.lower() in EXPORT_SUFFIXES and not Path(source).is_file():
        raise UserError(f"{source}: no such file")
    if is_export(source):
        return open_exported(source, device=device, engine=engine or DEFAULT_EXPORT_ENGINE)
    loaded = load_run(source, checkpoint=checkpoint, device=device)
    return with_engine(loaded, engine or DEFAULT_ENGINE)


def open_exported(path, device: str = "auto", engine: str = "auto"):
    """An exported ``.onnx`` / TorchScript ``.pt`` / bioimage.io ``.zip`` as an ExportedRun."""
    from biomedseg.inference.exported.format import exported_run, parse_metadata
    from biomedseg.runtime.device import resolve_device

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return open_package(path, device=device, engine=engine)
    if suffix == ".onnx":
        if engine == "torch":
            raise UserError(f"{path}: an ONNX file runs in ONNX Runtime (--engine onnxruntime or auto)")
        session = ort_session(path)
        doc = parse_metadata(ort_metadata(session), path)
        net = network(OrtRunner(session), "onnxruntime", len(session.get_outputs()) > 1)
        return exported_run(doc, net, path, torch.device("cpu"), "onnxruntime")
    if engine == "onnxruntime":
        raise UserError(f"{path}: a TorchScript file runs in PyTorch (--engine torch or auto)")
    dev = resolve_device(device)
    net, meta = script_network(path, dev)
    return exported_run(parse_metadata(meta, path), net, path, dev, "torch")


def _read_package(path) -> tuple[dict, dict[str, bytes]]:
    """``(metadata document, {"onnx"|"torchscript": weights bytes})`` of a bioimage.io package; a
    one-line UserError when it is not one (no ``rdf.yaml`` mapping, weights entries that are not
    ``{source: file}``, a named file missing)."""
    import yaml

    from biomedseg.inference.exported.format import parse_metadata

    def bad(problem: str) -> UserError:
        return UserError(f"{path}: not a bioimage.io package ({problem})")

    try:
        with zipfile.ZipFile(path) as zf:
            rdf = yaml.safe_load(zf.read("rdf.yaml"))
            if not isinstance(rdf, dict):
                raise bad(f"rdf.yaml is a {type(rdf).__name__}, not a mapping")
            entries = rdf.get("weights") or {}
            if not isinstance(entries, dict):
                raise bad("rdf.yaml weights is not a mapping")
            weights = {}
            for fmt in ("onnx", "torchscript"):
                entry = entries.get(fmt)
                if entry is not None and not (isinstance(entry, dict) and isinstance(entry.get("source"), str)):
                    raise bad(f"rdf.yaml weights.{fmt} has no source file name")
                if entry is not None:
                    weights[fmt] = zf.read(entry["source"])
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError) as exc:
        raise bad(str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__) from None
    config = rdf.get("config")
    return parse_metadata(config.get("biomedseg") if isinstance(config, dict) else None, path), weights


def open_package(path, device: str = "auto", engine: str = "auto"):
    """A bioimage.io package made by ``biomedseg export --format bioimageio``: the metadata of its
    ``rdf.yaml`` (``config.biomedseg``) and its ONNX (``onnxruntime``) or TorchScript (``torch``)
    weights. ``auto`` takes the ONNX weights when ONNX Runtime is installed: loading a TorchScript
    file runs code from it (unlike ONNX or a ``weights_only`` checkpoint), so it is loaded only
    when asked for (``torch``) or when it is the only way to run the package."""
    from biomedseg.inference.exported.format import exported_run
    from biomedseg.runtime.device import resolve_device

    doc, weights = _read_package(path)
    dev = resolve_device(device)
    if "onnx" in weights and engine in ("onnxruntime", "auto") and _has_onnxruntime():
        name, net = "onnxruntime", ort_network(weights["onnx"])
    elif "torchscript" in weights and engine in ("torch", "auto"):
        name, net = "torch", script_network(io.BytesIO(weights["torchscript"]), dev)[0]
    else:
        raise UserError(f"{path}: no weights for --engine {engine} in the package")
    loaded = exported_run(doc, net, path, dev, name)
    if name == "onnxruntime":
        loaded.device = torch.device("cpu")
    return loaded


def _has_onnxruntime(export: bool = False) -> bool:
    """onnxruntime is installed (and, with ``export``, what the ONNX exporter needs)."""
    import importlib.util

    needed = ("onnxruntime", "onnx", "onnxscript") if export else ("onnxruntime",)
    return all(importlib.util.find_spec(name) is not None for name in needed)


# ---------------------------------------------------------------- --engine for runs


def with_engine(loaded, engine: str):
    """``loaded`` (a run) with its network on ``engine``: ``torch`` as it is; ``onnxruntime``
    exported to ONNX in memory and run in ONNX Runtime (fp32, CPU); ``auto`` the faster of the
    two on one tile batch (torch when onnxruntime or the exporter's onnxscript is not installed)."""
    if engine == "torch" or (engine == "auto" and not _has_onnxruntime(export=True)):
        return loaded
    from biomedseg.inference.exported.graph import onnx_model

    t0 = time.perf_counter()
    proto, _ = onnx_model(loaded.model, loaded.info.channels, loaded.tile_size)
    ort_loaded = dataclasses.replace(
        loaded,
        model=ort_network(proto.SerializeToString()),
        device=torch.device("cpu"),
        precision="fp32",
        settings=dataclasses.replace(loaded.settings, channels_last=False),
    )
    log.info("exported the network to ONNX for ONNX Runtime in %.1f s", time.perf_counter() - t0)
    if engine == "onnxruntime":
        return ort_loaded
    name = pick_faster(loaded, {"torch": loaded, "onnxruntime": ort_loaded})
    return ort_loaded if name == "onnxruntime" else loaded


def _time_batch(loaded_or_model, template) -> float:
    """Seconds of one tile batch (after one warm-up batch) through the predictor's network."""
    from biomedseg.engine.sliding_window import tta_forward

    if isinstance(loaded_or_model, nn.Module):
        template = dataclasses.replace(template, model=loaded_or_model)
    else:
        template = loaded_or_model
    predictor = template.predictor()
    x = torch.randn(predictor.batch_size, template.info.channels, predictor.patch_size, predictor.patch_size)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(2):
            t0 = time.perf_counter()
            tta_forward(
                predictor.model,
                x.to(predictor.device),
                predictor.transforms[:1],
                predictor.device,
                predictor.precision,
                predictor.channels_last,
            )
            best = min(best, time.perf_counter() - t0)
    return best


def pick_faster(template, candidates: dict) -> str:
    """The name of the fastest of ``candidates`` (loaded runs or networks) on one tile batch."""
    seconds = {name: _time_batch(c, template) for name, c in candidates.items()}
    name = min(seconds, key=seconds.get)
    log.info(
        "--engine auto: %s (one tile batch: %s)", name, ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in seconds.items())
    )
    return name
