"""What the napari widgets do, without Qt: the library calls the command line makes.

A :class:`ModelState` is a model opened as ``predict`` opens it
(:func:`~biomedseg.inference.exported.engines.open_model_source`: a run, CV or ensemble folder, or
an exported ``.onnx`` / ``.pt`` / ``.zip``); :func:`predict_array` predicts one image array as
``predict`` predicts one file (the same :func:`~biomedseg.inference.predict.batch.prepare` and
:func:`~biomedseg.inference.predict.core.predict_image`, so the mask is the command's, pixel for
pixel), with the uncertainty map and the out-of-distribution verdict of :mod:`biomedseg.trust`.
Every problem with the user's input is a :class:`~biomedseg.core.errors.UserError` with the
command line's one-line message; the widgets show it as a notification.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError


@dataclass
class ModelState:
    """An opened model and what the widgets show of it."""

    source: Path
    loaded: object  # LoadedRun or ExportedRun
    colors: list[tuple[int, int, int]]  # RGB per class (the run's palette, else predict's overlay colours)
    trust: dict | None  # RUN/trust.json (None: no out-of-distribution check)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def classes(self) -> list[str]:
        return list(self.loaded.classes)

    @property
    def background(self) -> int | None:
        return self.loaded.background

    @property
    def run_dir(self) -> Path | None:
        """The run folder (``None`` for an exported file)."""
        return None if getattr(self.loaded, "run", None) is None else Path(self.loaded.run_dir)


@dataclass
class Prediction:
    """One image predicted: the mask ``predict`` writes, the per-pixel uncertainty, the
    ``predictions.csv`` row (uncertainty score, OOD columns) and the OOD verdict (or ``None``)."""

    mask: np.ndarray  # (H, W) uint8 class indices
    uncertainty: np.ndarray  # (H, W) float16, 0 sure .. 1 uniform
    row: dict
    ood: dict | None

    def verdict(self) -> str:
        """One line for the status bar: the uncertainty score and the OOD verdict."""
        text = f"uncertainty {self.row['uncertainty']:.3f}"
        if self.ood is None:
            return text + "; no out-of-distribution check (the run has no trust.json)"
        if self.ood["flag"]:
            return text + "; OUT OF DISTRIBUTION: " + "; ".join(self.ood["reasons"])
        return text + "; like the training data"


def load_model(path, device: str = "auto") -> ModelState:
    """Open ``path`` as ``predict`` opens it; ``UserError`` when it is not a model."""
    from biomedseg.inference.exported.engines import open_model_source
    from biomedseg.inference.predict.mask_outputs import class_colors_of

    if path is None or str(path).strip() in ("", "."):
        raise UserError("no model chosen: pick a run folder, CV folder, ensemble or exported file")
    source = Path(path)
    loaded = open_model_source(source, device=device)
    trust = None
    if getattr(loaded, "run", None) is not None:
        from biomedseg.trust.descriptor import read_description

        trust = read_description(loaded.run_dir)
    return ModelState(source, loaded, [tuple(int(v) for v in c) for c in class_colors_of(loaded)], trust)


def _best_validation(run_dir: Path) -> str | None:
    """``"val Dice 0.812 (epoch 14 of 20)"`` from ``metrics.csv``, or ``None``."""
    from biomedseg.runs.layout import RunPaths

    path = RunPaths(run_dir).metrics
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_dice")]
    if not rows:
        return None
    best = max(rows, key=lambda r: float(r["val_dice"]))
    return f"best validation Dice {float(best['val_dice']):.3f} (epoch {best['epoch']} of {rows[-1]['epoch']})"


def model_summary(state: ModelState) -> list[str]:
    """Lines the Model widget shows: kind, classes and colours, training data, validation metrics."""
    info = state.loaded.info
    run_dir = state.run_dir
    kind = "exported file" if run_dir is None else state.loaded.run.info().kind
    lines = [f"{state.name}: {kind}, {info.channels} channel(s) in, {len(state.classes)} classes"]
    for i, (name, colour) in enumerate(zip(state.classes, state.colors)):
        bg = " (background)" if i == state.background else ""
        lines.append(f"  {i} {name}{bg}: #{colour[0]:02x}{colour[1]:02x}{colour[2]:02x}")
    split = {k: len(v) for k, v in (info.split or {}).items() if v}
    if info.source or split:
        counts = ", ".join(f"{n} {k}" for k, n in split.items())
        lines.append(f"trained on {info.source or '?'}" + (f" ({counts} images)" if counts else ""))
    if run_dir is not None and kind == "run":
        best = _best_validation(run_dir)
        if best:
            lines.append(best)
        parent = state.loaded.run.info().parent
        if parent:
            where = parent.get("path") or parent.get("run") if isinstance(parent, dict) else parent
            lines.append(f"fine-tuned from {where}")
    lines.append("out-of-distribution check: " + ("on (trust.json)" if state.trust else "off (no trust.json)"))
    return lines


def layer_image(data, rgb: bool, name: str, multiscale: bool = False) -> np.ndarray:
    """A napari image layer's data as the ``(H, W, C)`` array ``read_image`` gives for a file:
    the shape checks and one-line messages of the zarr reader
    (:func:`~biomedseg.io.zarr_images.axes_plan`); alpha dropped, two channels read as grey."""
    from biomedseg.io.zarr_images import axes_plan

    if multiscale:
        data = data[0]
    if data is None or 0 in np.shape(data):
        raise UserError(f"{name}: the layer holds no image data")
    shape = tuple(np.shape(data))
    if rgb and len(shape) == 3:
        axes = "YXC"
    else:
        axes = "YX" if len(shape) == 2 else None
    template, y_ax, x_ax, c_ax = axes_plan(shape, axes, name)
    template[y_ax] = slice(None)  # the reader fills in a band of rows there; here: all rows
    arr = np.asarray(data[tuple(template)])
    order = sorted(a for a in (y_ax, x_ax, c_ax) if a is not None)  # the kept axes, in their order
    arr = np.moveaxis(arr, [order.index(y_ax), order.index(x_ax)], [0, 1])
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.shape[2] == 2:
        arr = arr[:, :, :1]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def layer_pixel_size(source_path) -> tuple[float, float] | None:
    """The ``(y, x)`` µm pixel size of the file a layer was read from (``None`` when unknown),
    as ``predict`` reads it."""
    from biomedseg.io.sources import open_source

    if not source_path or not Path(source_path).exists():
        return None
    try:
        with open_source(Path(source_path)) as src:
            return src.pixel_size
    except (UserError, OSError, ValueError):
        return None


def predict_array(state: ModelState, image: np.ndarray, pixel_size=None, options=None) -> Prediction:
    """Predict one ``(H, W, C)`` image as ``predict`` predicts a file (``options``: a
    :class:`~biomedseg.inference.predict.options.PredictOptions`, default the command's defaults)."""
    from biomedseg.inference.predict.batch import prepare
    from biomedseg.inference.predict.core import predict_image
    from biomedseg.inference.predict.options import PredictOptions
    from biomedseg.runtime.device import configure_threads
    from biomedseg.trust.rows import prediction_row, uncertainty_image

    options = options or PredictOptions()
    configure_threads(options.threads)
    loaded = state.loaded
    prepared = prepare(loaded, options, [], Path("."))
    features = None
    if state.trust is not None and state.trust.get("features") is not None:
        from biomedseg.trust.features import tapped

        with tapped(prepared.predictor) as tap:
            mask, proba = predict_image(loaded, prepared.predictor, image, prepared.post, pixel_size)
        features = tap.vector()
    else:
        mask, proba = predict_image(loaded, prepared.predictor, image, prepared.post, pixel_size)
    ood = None
    if state.trust is not None:
        from biomedseg.trust.ood import ood_scores

        ood = ood_scores(loaded, state.trust, image, pixel_size, features, prepared.predictor)
    row = prediction_row(proba, state.classes, state.background, mask, ood)
    return Prediction(mask, uncertainty_image(proba), row, ood)
