"""The Save corrections widget: a (corrected) Labels layer into a DATA folder as a training mask."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, PushButton

from biomedseg.core.errors import UserError
from biomedseg.napari_plugin.widgets.common import Job, require_model
from biomedseg.napari_plugin.widgets.predict import image_layers, source_path


def labels_layers(viewer) -> list[str]:
    from napari.layers import Labels

    return [layer.name for layer in viewer.layers if isinstance(layer, Labels)]


class SaveWidget(Container):
    """Write the chosen Labels layer as ``DATA/masks/<name>.png`` in the run's mask encoding (and
    the image as ``DATA/images/<name>.*`` when DATA lacks it). Paint label 255 where a region is
    not labelled (partial labels). An existing mask is replaced only when "replace" is ticked."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.labels_layer = ComboBox(label="labels layer", choices=lambda _: labels_layers(self.viewer))
        self.image_layer = ComboBox(label="image layer", choices=lambda _: image_layers(self.viewer))
        self.data = FileEdit(mode="d", label="DATA folder")
        self.file_name = LineEdit(label="name", tooltip="file name of the mask (default: the image layer's name)")
        self.overwrite = CheckBox(value=False, text="replace an existing mask (confirm)")
        self.save_button = PushButton(text="Save corrections")
        self.extend([self.labels_layer, self.image_layer, self.data, self.file_name, self.overwrite, self.save_button])
        self.job = Job(self, "saving")
        self.save_button.changed.connect(self.save)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda *_: self.reset_choices())
        self.last = None  # what the last save wrote

    def save(self, *_) -> dict | None:
        """Save now (small: in the GUI thread); a problem is a notification and nothing is written."""
        from biomedseg.napari_plugin.corrections import SaveOptions, save_correction
        from biomedseg.napari_plugin.session import layer_image

        try:
            state = require_model(self.viewer)
            if not self.labels_layer.value or not self.image_layer.value:
                raise UserError("choose a labels layer and the image layer it belongs to")
            labels, image_layer = (
                self.viewer.layers[self.labels_layer.value],
                self.viewer.layers[self.image_layer.value],
            )
            image = layer_image(image_layer.data, image_layer.rgb, image_layer.name, image_layer.multiscale)
            options = SaveOptions(overwrite=bool(self.overwrite.value), image_source=source_path(image_layer))
            name = self.file_name.value.strip() or image_layer.name
            self.last = save_correction(state, labels.data, image, str(self.data.value or ""), name, options)
        except (UserError, OSError) as exc:
            self.job.fail(exc)
            return None
        self.overwrite.value = False  # each replacement is confirmed again
        self.job.status.value = f"wrote {self.last['mask']}"
        return self.last
