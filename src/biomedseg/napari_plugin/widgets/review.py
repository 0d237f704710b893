"""The Review widget: a folder of images with their predictions, most uncertain first; accept a
prediction (or correct it with napari's label tools first) into a DATA folder."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton

from biomedseg.core.errors import UserError
from biomedseg.napari_plugin.widgets.common import Job, require_model

IMAGE_LAYER, LABELS_LAYER, UNCERTAINTY_LAYER = "review: image", "review: prediction", "review: uncertainty"


def suggest_order(state, files: list[Path]) -> list[Path]:
    """The files in ``biomedseg suggest``'s order (uncertainty and diversity; images of the
    training data and near duplicates of them left out); its CSV and contact sheet are not kept."""
    import tempfile

    from biomedseg.trust.suggest import SuggestOptions, suggest

    if state.run_dir is None:
        raise UserError(f"{state.source}: the suggest order needs a run folder (it reads the training data)")
    with tempfile.TemporaryDirectory(prefix="biomedseg-suggest-") as tmp:
        options = SuggestOptions(n=len(files), out=Path(tmp) / "suggest.csv", device=str(state.loaded.device))
        rows = suggest(state.run_dir, [str(f) for f in files], options)["rows"]
    return [Path(row["file"]) for row in rows]


def score_folder(state, files: list[Path], use_suggest: bool = False):
    """Predict each file (as ``predict`` does); yields ``(done, file, Prediction or message)``.
    An unreadable file is reported and skipped, as in ``predict``. Returns the ``suggest`` order
    when asked (``None``: most uncertain first)."""
    from biomedseg.io.images import read_image
    from biomedseg.napari_plugin.session import layer_pixel_size, predict_array

    for i, file in enumerate(files):
        try:
            prediction = predict_array(state, read_image(file), layer_pixel_size(file))
        except UserError as exc:
            prediction = str(exc)
        yield i + 1, file, prediction
    return suggest_order(state, files) if use_suggest else None


class ReviewWidget(Container):
    """Rank a folder's images by the uncertainty ``predict`` writes (``predictions.csv``'s
    ``uncertainty``), or in ``biomedseg suggest``'s order (uncertainty and diversity, the training
    images left out), then step through them; Accept saves the shown labels as the image's mask."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.folder = FileEdit(mode="d", label="images")
        self.data = FileEdit(mode="d", label="accept into DATA")
        self.use_suggest = CheckBox(value=False, text="suggest order (uncertainty + diversity)")
        self.rank_button = PushButton(text="Predict and rank")
        self.position = Label(value="", label="")
        self.prev_button, self.next_button = PushButton(text="Previous"), PushButton(text="Next")
        self.accept_button = PushButton(text="Accept (save mask)")
        nav = Container(widgets=[self.prev_button, self.next_button, self.accept_button], layout="horizontal")
        self.extend([self.folder, self.data, self.use_suggest, self.rank_button, self.position, nav])
        self.job = Job(self, "ranking")
        self.rank_button.changed.connect(self.rank)
        self.prev_button.changed.connect(lambda *_: self.show_image(self.current - 1))
        self.next_button.changed.connect(lambda *_: self.show_image(self.current + 1))
        self.accept_button.changed.connect(self.accept)
        self.results: dict = {}
        self.order: list[Path] = []
        self.current = -1

    def rank(self, *_) -> None:
        from biomedseg.napari_plugin.corrections import review_files

        try:
            state = require_model(self.viewer)
            files = review_files(str(self.folder.value or ""))
        except UserError as exc:
            self.job.fail(exc)
            return
        self.results, self.order, self.current = {}, [], -1
        args = (state, files, bool(self.use_suggest.value))
        self.job.start(score_folder, *args, total=len(files), step=self._scored, done=lambda o: self._ranked(state, o))

    def _scored(self, item) -> None:
        done, file, prediction = item
        self.results[file] = prediction
        self.job.step(done, f"predicted {done}: {file.name}")

    def _ranked(self, state, suggested: list[Path] | None) -> None:
        from biomedseg.napari_plugin.corrections import review_order

        failed = {f: p for f, p in self.results.items() if isinstance(p, str)}
        scores = {f: p.row["uncertainty"] for f, p in self.results.items() if not isinstance(p, str)}
        self.order = [f for f in suggested if f in scores] if suggested is not None else review_order(scores)
        self.state = state
        note = f"; {len(failed)} unreadable (skipped): {next(iter(failed.values()))}" if failed else ""
        how = "in suggest order" if suggested is not None else "most uncertain first"
        self.job.status.value = f"{len(self.order)} images, {how}{note}"
        self.show_image(0)

    def show_image(self, index: int) -> None:
        from biomedseg.io.images import read_image
        from biomedseg.napari_plugin.layers import add_tuple, mask_layer, uncertainty_layer

        if not self.order:
            return
        self.current = index % len(self.order)
        file = self.order[self.current]
        prediction = self.results[file]
        image = read_image(file)
        pixels = image[:, :, 0] if image.shape[2] == 1 else image
        meta = {"biomedseg_path": str(file)}
        add_tuple(self.viewer, (pixels, {"name": IMAGE_LAYER, "rgb": image.shape[2] == 3, "metadata": meta}, "image"))
        add_tuple(self.viewer, uncertainty_layer(prediction.uncertainty, UNCERTAINTY_LAYER, visible=False))
        s = self.state
        add_tuple(self.viewer, mask_layer(prediction.mask.copy(), LABELS_LAYER, s.colors, s.background))
        self.viewer.layers.selection.active = self.viewer.layers[LABELS_LAYER]
        self.position.value = (
            f"{self.current + 1}/{len(self.order)}: {file.name} (uncertainty {prediction.row['uncertainty']:.3f})"
        )

    def accept(self, *_) -> dict | None:
        """Save the shown labels (as corrected) as the mask of the shown image in the DATA folder."""
        from biomedseg.io.images import read_image
        from biomedseg.napari_plugin.corrections import SaveOptions, save_correction

        try:
            if self.current < 0 or LABELS_LAYER not in self.viewer.layers:
                raise UserError("nothing to accept: rank a folder first")
            file = self.order[self.current]
            labels = self.viewer.layers[LABELS_LAYER].data
            saved = save_correction(
                self.state,
                labels,
                read_image(file),
                str(self.data.value or ""),
                file.stem,
                SaveOptions(image_source=file),
            )
        except (UserError, OSError) as exc:
            self.job.fail(exc)
            return None
        self.job.status.value = f"wrote {saved['mask']}"
        return saved
