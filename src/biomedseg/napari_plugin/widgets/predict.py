"""The Predict widget: the selected image layer through the loaded model, as ``biomedseg predict``."""

from __future__ import annotations

import tempfile
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton

from biomedseg.core.errors import UserError
from biomedseg.napari_plugin.widgets.common import Job, on_model_change, require_model


def source_path(layer) -> Path | None:
    """The file a layer was read from (napari's ``source.path`` or the plugin's metadata)."""
    path = layer.metadata.get("biomedseg_path") or getattr(getattr(layer, "source", None), "path", None)
    return Path(path) if path else None


def image_layers(viewer) -> list[str]:
    from napari.layers import Image

    return [layer.name for layer in viewer.layers if isinstance(layer, Image) and not layer.metadata.get("biomedseg")]


def _streams(layer, path: Path | None) -> bool:
    """Whether ``predict`` streams this input (a huge or pyramid file): then the plugin does too."""
    from biomedseg.inference.predict.batch import wants_streaming

    if path is None or not path.exists():
        return False
    return bool(layer.multiscale) or wants_streaming(path)[0]


def predict_in_memory(state, layer_data, rgb: bool, name: str, multiscale: bool, path):
    from biomedseg.napari_plugin.session import layer_image, layer_pixel_size, predict_array

    image = layer_image(layer_data, rgb, name, multiscale)
    return predict_array(state, image, layer_pixel_size(path))


def predict_streamed(state, path: Path, out: Path):
    """A huge input as the command line predicts it (band by band to an OME-Zarr mask); returns
    the mask's pyramid, opened lazily."""
    from biomedseg.inference.predict.batch import predict
    from biomedseg.inference.predict.options import PredictOptions
    from biomedseg.napari_plugin.readers import open_mask_levels

    summary = predict(state.loaded, [path], out, PredictOptions(output_format="zarr", overlays=False, stream=True))
    if summary.failed:
        raise UserError(summary.failed[0][1])
    mask = [p for p in summary.outputs if p.suffix == ".zarr" and not p.stem.endswith("_proba")]
    return open_mask_levels(mask[0] if mask else out / f"{path.stem}.zarr")


class PredictWidget(Container):
    """Predict the chosen image layer: a Labels layer in the run's colours, named after the model,
    an uncertainty Image layer and the out-of-distribution verdict in the status bar."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layer = ComboBox(label="image layer", choices=lambda _: image_layers(self.viewer))
        self.uncertainty = CheckBox(value=True, text="add the uncertainty map")
        self.out = FileEdit(mode="d", label="huge images to", tooltip="folder for streamed masks (default: temporary)")
        self.predict_button = PushButton(text="Predict")
        self.extend([self.layer, self.uncertainty, self.out, self.predict_button])
        self.job = Job(self, "predicting")
        self.predict_button.changed.connect(self.predict)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda *_: self.layer.reset_choices())
        on_model_change(self.viewer, self._model_changed)
        self.last = None  # the last Prediction (tests and the Review widget read it)

    def _model_changed(self, state) -> None:
        self.job.status.value = f"model: {state.name}"

    def predict(self, *_) -> None:
        try:
            state = require_model(self.viewer)
            if not self.layer.value or self.layer.value not in self.viewer.layers:
                raise UserError("no image layer chosen: open an image first")
        except UserError as exc:
            self.job.fail(exc)
            return
        layer = self.viewer.layers[self.layer.value]
        path = source_path(layer)
        if _streams(layer, path):
            out = Path(str(self.out.value)) if str(self.out.value) not in ("", ".") else None
            out = out or Path(tempfile.mkdtemp(prefix="biomedseg-napari-"))
            self.job.start(predict_streamed, state, path, out, done=lambda levels: self._streamed(state, layer, levels))
            return
        args = (state, layer.data, layer.rgb, layer.name, layer.multiscale, path)
        self.job.start(predict_in_memory, *args, done=lambda pred: self._show(state, layer, pred))

    def _placement(self, layer) -> dict:
        return {"scale": layer.scale[-2:], "translate": layer.translate[-2:], "metadata": {"biomedseg": "prediction"}}

    def _show(self, state, layer, prediction) -> None:
        from biomedseg.napari_plugin.layers import add_tuple, mask_layer, uncertainty_layer

        self.last = prediction
        where = self._placement(layer)
        name = f"{state.name}: {layer.name}"
        add_tuple(self.viewer, mask_layer(prediction.mask, name, state.colors, state.background, **where))
        if self.uncertainty.value:
            add_tuple(self.viewer, uncertainty_layer(prediction.uncertainty, f"{name} uncertainty", **where))
        self.viewer.layers.selection.active = self.viewer.layers[name]
        verdict = f"{layer.name}: {prediction.verdict()}"
        self.viewer.status = verdict
        self.job.status.value = verdict
        if prediction.ood is not None and prediction.ood["flag"]:
            from napari.utils.notifications import show_warning

            show_warning(verdict)

    def _streamed(self, state, layer, levels) -> None:
        from biomedseg.napari_plugin.layers import add_tuple, mask_layer

        name = f"{state.name}: {layer.name}"
        where = self._placement(layer)
        data, pyramid = (levels, True) if len(levels) > 1 else (levels[0], False)
        add_tuple(self.viewer, mask_layer(data, name, state.colors, state.background, multiscale=pyramid, **where))
        self.job.status.value = f"{layer.name}: streamed (huge image, {len(levels)} level(s)); no uncertainty map"
