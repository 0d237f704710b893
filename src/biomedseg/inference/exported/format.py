"""The metadata document of an exported model, and the run-like object predict builds from it.

Every exported file (ONNX ``metadata_props["biomedseg"]``, the TorchScript extra file
``biomedseg.json``, ``config.biomedseg`` of a bioimage.io ``rdf.yaml``) carries one JSON document,
versioned (``format``/``version``), holding everything ``predict`` needs to give the masks it
gives from the run folder:

- ``input``: channels, and how other inputs are conformed to them (grey <-> RGB, alpha dropped);
- ``normalization``: per-channel mean/std and clipping bounds (``Normalizer.to_json``) and formula;
- ``sliding_window``: patch size, overlap, tiles per forward pass, Gaussian blending, padding;
- ``classes``: names, background, palette (``Palette.to_json``);
- ``tta``: the default (``none``, as ``predict``) and what post-processing was tuned with;
- ``postprocess``: the run's ``postprocess.yaml`` chain (``null``: argmax);
- ``trust``: the run's ``trust.json`` (what it was trained on, for the out-of-distribution warnings of
  ``predict``; :mod:`biomedseg.trust.descriptor`), ``null`` for a run trained before it existed;
- ``network``: architecture, inputs/outputs, dynamic axes, opset, what was dropped (deep
  supervision) or kept (classifier head);
- ``source``: provenance as names and content hashes, never paths of the exporting machine or its
  login name (exports are meant to be shared): the run folder's name, the checkpoint, a SHA-256 of
  the exported weights, the training data folder's name and a SHA-256 of the run's dataset
  description (classes, normalisation, split ids).

:class:`ExportedRun` is a :class:`~biomedseg.inference.run.LoadedRun` built from that document
and the exported network (no run folder), so the rest of predict is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from biomedseg.core.errors import UserError
from biomedseg.inference.run import LoadedRun

EXPORT_FORMAT = "biomedseg.export"
EXPORT_VERSION = 1
CONFORM_RULE = (
    "(H, W[, C]) raw image -> channels: grey -> RGB repeats the grey channel; RGB -> grey takes "
    "channel 0 when R == G == B, else the ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B (rounded for "
    "integer images); an alpha channel is dropped"
)
NORMALIZATION_FORMULA = (
    "x' = (clip(x, clip.low[c], clip.high[c]) - mean[c]) / std[c] in raw units (no clipping without clip)"
)
DEEP_SUPERVISION = "dropped: auxiliary heads run only in training; the graph is traced in eval mode"


def _tta_tuned_with(post) -> str | None:
    tuning = getattr(post, "tuning", None) or {}
    return tuning.get("tta")


def _sliding_window(loaded: LoadedRun) -> dict:
    predictor = loaded.predictor()
    inferer = getattr(predictor, "inferer", None)
    return {
        "patch_size": int(predictor.patch_size),
        "overlap": float(predictor.overlap),
        "batch_size": int(predictor.batch_size),
        "blending": getattr(inferer, "mode", "gaussian"),
        "sigma_scale": getattr(inferer, "sigma_scale", None),
        "padding": getattr(inferer, "padding_mode", None),
        "grid": "MONAI dense_patch_slices (step int(patch * (1 - overlap)), last tile flush with the border)",
        "small_images": "reflect-padded symmetrically to one patch and cropped back",
    }


def weights_sha256(model) -> str:
    """SHA-256 of ``model``'s state dict (names, dtypes, shapes and values, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _portable(value):
    """``value`` with every absolute path (a string) replaced by its last component."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def provenance(loaded: LoadedRun, checkpoint: str) -> dict:
    """``source`` of the metadata: names and content hashes only (module docstring)."""
    info = loaded.info
    described = info.model_dump(mode="json", exclude={"source"})
    return {
        "run": Path(loaded.run_dir).name,
        "checkpoint": checkpoint,
        "weights_sha256": weights_sha256(loaded.model),
        "data": Path(info.source).name if info.source else None,
        "dataset_sha256": hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest(),
        "parent": _parent(loaded),
    }


def _parent(loaded: LoadedRun) -> dict | None:
    """The run's ``--init`` parent (``run.json``) by name and checkpoint hash: lineage without a local path."""
    run = getattr(loaded, "run", None)
    parent = getattr(run.info(), "parent", None) if run is not None else None
    if not parent:
        return None
    return {k: parent.get(k) for k in ("run", "origin", "checkpoint", "sha256")}


def _trust_description(loaded: LoadedRun) -> dict | None:
    """The run's ``trust.json`` as it is (no path in it), or ``None``."""
    from biomedseg.runs.layout import RunPaths

    path = RunPaths(loaded.run_dir).trust
    return json.loads(path.read_text()) if path.is_file() else None


def build_metadata(loaded: LoadedRun, post, network: dict, checkpoint: str = "best") -> dict:
    """The metadata document of ``loaded`` (a run) with its post-processing ``post`` (or ``None``)
    and the ``network`` section written by the exporter. It names no path of this machine."""
    from datetime import datetime, timezone

    from biomedseg import __version__
    from biomedseg.engine.sliding_window import TTA_MODES

    info, settings = loaded.info, loaded.settings
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "biomedseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": provenance(loaded, checkpoint),
        "network": {"architecture": settings.architecture, "deep_supervision": DEEP_SUPERVISION, **network},
        "input": {"channels": info.channels, "dtype": "any (raw pixel values)", "conform": CONFORM_RULE},
        "normalization": {**loaded.normalizer.to_json(), "formula": NORMALIZATION_FORMULA},
        "sliding_window": _sliding_window(loaded),
        "tta": {"default": "none", "modes": list(TTA_MODES), "tuned_with": _tta_tuned_with(post)},
        "classes": {
            "names": list(info.classes),
            "background": info.background,
            "palette": info.palette,
            "strict_index": info.strict_index,
        },
        "postprocess": _portable(post.model_dump(mode="json")) if post is not None else None,
        "trust": _trust_description(loaded),
        "dataset": {
            "n_classes": info.n_classes,
            "class_pixel_counts": info.class_pixel_counts,
            "class_weights": info.class_weights,
        },
    }


def metadata_json(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":"))


def parse_metadata(text: str | dict | None, source) -> dict:
    """The checked metadata document; a one-line UserError when it is missing or not readable."""
    if text is None:
        raise UserError(f"{source}: no biomedseg metadata (export it with `biomedseg export`)")
    try:
        doc = text if isinstance(text, dict) else json.loads(text)
    except ValueError as exc:
        raise UserError(f"{source}: biomedseg metadata is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise UserError(
            f"{source}: not a biomedseg export "
            f"(metadata format {doc.get('format') if isinstance(doc, dict) else '?'!r})"
        )
    if int(doc.get("version", 0)) > EXPORT_VERSION:
        raise UserError(
            f"{source}: export format {doc['version']}, newer than this biomedseg reads "
            f"({EXPORT_VERSION}); upgrade biomedseg"
        )
    for key in ("network", "input", "normalization", "sliding_window", "classes", "dataset"):
        if not isinstance(doc.get(key), dict):
            raise UserError(f"{source}: biomedseg metadata has no {key!r} section")
    return doc


@dataclass
class ExportedRun(LoadedRun):
    """A :class:`LoadedRun` made from an exported file: ``run`` is ``None``, ``path`` the file."""

    path: Path | None = None
    metadata: dict = field(default_factory=dict)
    engine: str = "torch"

    @property
    def run_dir(self) -> Path:
        return self.path

    def postprocess(self):
        from biomedseg.runs.postprocess import PostprocessConfig

        data = self.metadata.get("postprocess")
        return PostprocessConfig.model_validate(data) if data else None


def exported_run(doc: dict, model, path, device, engine: str) -> ExportedRun:
    """The run-like object of an exported file: its metadata ``doc`` and network ``model``. Its
    settings are the metadata's sliding window as written (``batch_size``: tiles per forward pass)."""
    from biomedseg.inference.settings import InferenceSettings
    from biomedseg.runs import DatasetInfo
    from biomedseg.transforms.normalize import Normalizer

    sw, classes = doc["sliding_window"], doc["classes"]
    settings = InferenceSettings(
        patch_size=int(sw["patch_size"]),
        overlap=float(sw["overlap"]),
        batch_size=max(1, int(sw["batch_size"])),
        precision="fp32",
        channels_last=False,
        architecture=doc["network"].get("architecture", "unet"),
    )
    info = DatasetInfo(
        classes=classes["names"],
        background=classes.get("background"),
        palette=classes["palette"],
        strict_index=classes.get("strict_index", False),
        channels=doc["input"]["channels"],
        n_classes=doc["dataset"]["n_classes"],
        normalization=doc["normalization"],
        class_pixel_counts=doc["dataset"].get("class_pixel_counts"),
        class_weights=doc["dataset"].get("class_weights"),
    )
    return ExportedRun(
        run=None,
        model=model,
        settings=settings,
        info=info,
        normalizer=Normalizer.from_json(doc["normalization"]),
        device=device,
        precision="fp32",
        path=Path(path),
        metadata=doc,
        engine=engine,
    )
