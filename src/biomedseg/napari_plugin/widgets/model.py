"""The Model widget: open a run folder, CV folder, ensemble or exported file and show what it is."""

from __future__ import annotations

from magicgui.widgets import Container, FileEdit, Label, PushButton

from biomedseg.napari_plugin.widgets.common import Job, on_model_change, set_model


class ModelWidget(Container):
    """Pick a model (a folder, or type the path of an ``.onnx`` / ``.pt`` / ``.zip``) and load it:
    its classes with their colours, its training data and validation metrics are listed, and the
    other widgets predict, review and retrain with it."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.path = FileEdit(mode="d", label="model", tooltip="run / CV / ensemble folder, or an exported file")
        self.device = "auto"
        self.load_button = PushButton(text="Load model")
        self.summary = Label(value="no model loaded", label="")
        self.extend([self.path, self.load_button, self.summary])
        self.job = Job(self, "loading the model")
        self.load_button.changed.connect(self.load)
        self.state = None
        on_model_change(self.viewer, self._show)  # a run made by the Retrain widget, too

    def load(self, *_) -> None:
        from biomedseg.napari_plugin.session import load_model

        self.job.start(load_model, str(self.path.value or ""), self.device, done=self._loaded)

    def _loaded(self, state) -> None:
        set_model(self.viewer, state)

    def _show(self, state) -> None:
        from biomedseg.napari_plugin.session import model_summary

        self.state = state
        self.path.value = state.source
        self.summary.value = "\n".join(model_summary(state))
        self.job.status.value = f"loaded {state.name}"
