"""The napari plugin on a real (offscreen) napari viewer: what issue 24 checks.

The Model widget loads a small trained run; Predict adds a Labels layer equal to ``biomedseg
predict``'s mask; Save corrections writes a mask ``biomedseg audit`` accepts; Retrain makes a run
``biomedseg evaluate`` accepts; bad input is a notification with the command line's message and
writes nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from .support import screenshot

pytestmark = pytest.mark.slow  # trains a network (the session's tiny run)

WAIT_MS = 120_000


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """``biomedseg ARGS`` in this process: exit code and the stderr line without ``error:``."""
    from biomedseg.cli import main

    monkeypatch.setattr(sys, "argv", ["biomedseg", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    return code, err[-1][len("error: ") :] if err else ""


def notifications() -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.job.busy, timeout=WAIT_MS)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def viewer_with_model(make_napari_viewer, qtbot, napari_run):
    """A viewer with the five dock widgets and the session's run loaded in the Model widget."""
    from biomedseg.napari_plugin.widgets import ModelWidget, PredictWidget, RetrainWidget, ReviewWidget, SaveWidget

    viewer = make_napari_viewer()
    widgets = {}
    for name, cls in (
        ("model", ModelWidget),
        ("predict", PredictWidget),
        ("review", ReviewWidget),
        ("save", SaveWidget),
        ("retrain", RetrainWidget),
    ):
        widgets[name] = cls(viewer)
        viewer.window.add_dock_widget(widgets[name], name=f"biomedseg: {name}", area="right")
    widgets["model"].path.value = napari_run
    widgets["model"].load()
    wait(qtbot, widgets["model"])
    return viewer, widgets


def open_image(viewer, path: Path):
    """The image as napari's own reader opens it."""
    return viewer.open(path, plugin="napari")[0]


def test_model_widget_loads_the_run(viewer_with_model, napari_run):
    from biomedseg.napari_plugin.widgets.common import current_model

    viewer, w = viewer_with_model
    state = current_model(viewer)
    assert state is not None and state.run_dir == Path(napari_run)
    text = w["model"].summary.value
    for name in state.classes:
        assert name in text
    assert "best validation Dice" in text and "out-of-distribution check: on" in text
    screenshot(viewer, "napari_model_widget", w["model"])


def test_predict_layer_equals_the_command_lines_mask(
    viewer_with_model, napari_data, napari_run, qtbot, tmp_path, monkeypatch, capsys
):
    from biomedseg.io.mask_encoding import read_written_mask

    viewer, w = viewer_with_model
    image = napari_data / "images" / "syn_008.png"  # a test image
    code, err = cli(monkeypatch, capsys, "predict", napari_run, image, "--out", tmp_path / "pred", "--quiet")
    assert code == 0, err
    expected = read_written_mask(tmp_path / "pred" / "syn_008.png")
    layer = open_image(viewer, image)
    w["predict"].layer.reset_choices()
    w["predict"].layer.value = layer.name
    w["predict"].predict()
    wait(qtbot, w["predict"])
    labels = viewer.layers[f"{Path(napari_run).name}: {layer.name}"]
    assert type(labels).__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
    assert len(np.unique(expected)) > 1  # the comparison is not between two empty masks
    uncertainty = viewer.layers[f"{Path(napari_run).name}: {layer.name} uncertainty"]
    assert uncertainty.data.shape == expected.shape and 0 <= float(uncertainty.data.min()) <= 1
    assert "uncertainty" in viewer.status and ("like the training data" in viewer.status or "OUT OF" in viewer.status)
    # the run's class colours (background transparent)
    colours = labels.colormap.color_dict
    assert colours[0][3] == 0 and colours[1][3] == 1
    screenshot(viewer, "napari_predict_widget", w["predict"])
    if os.environ.get("BIOMEDSEG_SCREENSHOTS"):  # the viewer: image + prediction | uncertainty, side by side
        for name in ("review", "save", "retrain"):
            viewer.window._dock_widgets[f"biomedseg: {name}"].hide()
        viewer.window._qt_window.resize(1900, 900)
        viewer.grid.enabled, viewer.grid.stride = True, 2
        viewer.reset_view()
        screenshot(viewer, "napari_prediction_uncertainty")
        viewer.grid.enabled = False


def test_save_corrections_writes_a_mask_audit_accepts(
    viewer_with_model, napari_data, qtbot, tmp_path, monkeypatch, capsys
):
    from biomedseg.io.images import read_raw

    viewer, w = viewer_with_model
    layer = open_image(viewer, napari_data / "images" / "syn_009.png")
    w["predict"].layer.reset_choices()
    w["predict"].layer.value = layer.name
    w["predict"].predict()
    wait(qtbot, w["predict"])
    labels = viewer.layers[-2] if viewer.layers[-1].name.endswith("uncertainty") else viewer.layers[-1]
    corrected = np.asarray(labels.data).copy()
    corrected[10:30, 20:50] = 1  # a correction painted with class 1 (differs from the prediction)
    assert not np.array_equal(corrected, labels.data)
    labels.data = corrected
    save, data = w["save"], tmp_path / "corrections"
    save.reset_choices()
    save.labels_layer.value, save.image_layer.value, save.data.value = labels.name, layer.name, data
    written = save.save()
    assert written is not None, save.job.status.value
    np.testing.assert_array_equal(read_raw(written["mask"]), corrected)
    assert written["image"].is_file() and written["image_written"]
    screenshot(viewer, "napari_save_widget", save)
    code, err = cli(monkeypatch, capsys, "audit", data, "--out", tmp_path / "audit", "--quiet")
    assert code == 0, err
    assert (tmp_path / "audit" / "audit.json").is_file()
    # saving again without the confirmation: refused, the mask unchanged
    labels.data = np.zeros_like(corrected)
    assert save.save() is None
    assert "a mask exists already" in notifications()[-1]
    np.testing.assert_array_equal(read_raw(written["mask"]), corrected)
    save.overwrite.value = True
    assert save.save() is not None
    assert read_raw(written["mask"]).max() == 0


def test_partial_labels_are_saved_as_unlabelled(viewer_with_model, napari_data, tmp_path):
    from biomedseg.io.images import read_raw

    viewer, w = viewer_with_model
    layer = open_image(viewer, napari_data / "images" / "syn_001.png")
    partial = np.full(layer.data.shape[:2], 255, np.uint8)
    partial[5:15, 5:15] = 1
    partial[40:50, 40:50] = 0
    viewer.add_labels(partial, name="scribbles")
    save = w["save"]
    save.reset_choices()
    save.labels_layer.value, save.image_layer.value, save.data.value = "scribbles", layer.name, tmp_path / "partial"
    written = save.save()
    assert written is not None, save.job.status.value
    assert written["unlabelled"] == int((partial == 255).sum())
    np.testing.assert_array_equal(read_raw(written["mask"]), partial)


def test_retrain_makes_a_run_evaluate_accepts(
    viewer_with_model, napari_data, napari_run, qtbot, tmp_path, monkeypatch, capsys
):
    from biomedseg.napari_plugin.widgets.common import current_model

    viewer, w = viewer_with_model
    retrain = w["retrain"]
    retrain.data.value, retrain.out.value = napari_data, tmp_path / "child"
    retrain.time_budget.value = ""
    retrain.settings.value = (
        "epochs=2 seed=0 patch_size=64 batch_size=4 iterations_per_epoch=2 num_threads=1 "
        "model_kwargs.depth=3 model_kwargs.base_channels=8 model_kwargs.num_res_units=0"
    )
    retrain.train()
    wait(qtbot, retrain)
    assert retrain.new_run is not None, retrain.job.status.value
    assert len(retrain.history.value.splitlines()) == 2  # the validation Dice of each epoch, live
    screenshot(viewer, "napari_retrain_widget", retrain)
    code, err = cli(monkeypatch, capsys, "evaluate", retrain.new_run, napari_data, "--out", tmp_path / "eval")
    assert code == 0, err
    run_json = (Path(retrain.new_run) / "run.json").read_text()
    assert str(Path(napari_run).name) in run_json  # the parent: a fine-tune of the loaded run
    retrain.use_new_run()
    wait(qtbot, retrain)
    assert current_model(viewer).source == Path(retrain.new_run)
    assert f"fine-tuned from {Path(napari_run).resolve()}" in w["model"].summary.value  # the Model widget follows


def test_review_ranks_most_uncertain_first_and_accepts(viewer_with_model, napari_data, qtbot, tmp_path):
    viewer, w = viewer_with_model
    review = w["review"]
    review.folder.value, review.data.value = napari_data, tmp_path / "accepted"
    review.rank()
    wait(qtbot, review)
    scores = [review.results[f].row["uncertainty"] for f in review.order]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    assert "review: prediction" in viewer.layers
    saved = review.accept()
    assert saved is not None and saved["mask"].is_file()
    screenshot(viewer, "napari_review_widget", review)


def test_bad_inputs_notify_and_write_nothing(
    viewer_with_model, napari_data, napari_run, qtbot, tmp_path, monkeypatch, capsys
):
    import shutil

    import zarr

    from biomedseg.inference.predict.batch import predict

    viewer, w = viewer_with_model
    n_layers = len(viewer.layers)
    # a folder that is not a run: the message of `biomedseg predict NOT_A_RUN ...`
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    code, expected = cli(monkeypatch, capsys, "predict", not_a_run, napari_data / "images", "--out", tmp_path / "p")
    assert code == 2 and expected
    w["model"].path.value = not_a_run
    w["model"].load()
    wait(qtbot, w["model"])
    assert notifications()[-1] == expected and w["model"].job.status.value == expected
    # an image with other channels than the model takes: the zarr reader's message for the same array
    five = np.random.default_rng(0).integers(0, 255, (5, 64, 96), dtype=np.uint8)
    zarr.save_array(str(tmp_path / "five.zarr"), five)
    summary = predict(napari_run, [tmp_path / "five.zarr"], tmp_path / "p5", quiet=True)  # what the CLI logs
    [(_, cli_line)] = summary.failed
    shutil.rmtree(tmp_path / "p5")
    viewer.add_image(five, name="five")
    w["predict"].layer.reset_choices()
    w["predict"].layer.value = "five"
    w["predict"].predict()
    wait(qtbot, w["predict"])
    problem = notifications()[-1]
    assert problem.startswith("five: ") and problem[len("five: ") :] in cli_line
    # no image layer to predict (napari itself refuses layers of zero size: session.layer_image's
    # "holds no image data" is checked in test_napari_manifest.py)
    viewer.layers.remove("five")
    w["predict"].layer.reset_choices()
    w["predict"].predict()
    assert notifications()[-1] == "no image layer chosen: open an image first"
    save = w["save"]
    # saving into a read-only folder: the message of the command line's output check
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: not (Path(p) == ro and mode & os.W_OK) and real_access(p, mode, **kw)
    )
    code, expected = cli(monkeypatch, capsys, "predict", napari_run, napari_data / "images", "--out", ro / "images")
    assert code == 2 and "not writable" in expected
    viewer.add_labels(np.zeros((64, 96), np.uint8), name="zeros")
    viewer.add_image(np.zeros((64, 96), np.uint8), name="grey")
    save.reset_choices()
    save.labels_layer.value, save.image_layer.value, save.data.value = "zeros", "grey", ro
    assert save.save() is None and notifications()[-1] == expected
    # nothing written anywhere, and the viewer still works: predicting a good layer succeeds
    assert files_under(ro) == [] and not (tmp_path / "p5").exists() and not (tmp_path / "p").exists()
    assert len(viewer.layers) == n_layers + 2
    w["predict"].layer.reset_choices()
    w["predict"].layer.value = "grey"
    w["predict"].predict()
    wait(qtbot, w["predict"])
    assert f"{Path(napari_run).name}: grey" in viewer.layers


def test_huge_inputs_are_streamed_as_the_command_line_streams_them(
    viewer_with_model, napari_data, napari_run, qtbot, tmp_path, monkeypatch, capsys
):
    """A zarr input is what ``predict`` streams: the widget streams it too (an OME-Zarr mask opened
    lazily), and the mask equals the command's."""
    import zarr

    from biomedseg.io.images import read_image
    from biomedseg.io.zarr_images import open_level

    viewer, w = viewer_with_model
    image = read_image(napari_data / "images" / "syn_008.png")[:, :, 0]
    zarr.save_array(str(tmp_path / "slide.zarr"), image)
    code, err = cli(
        monkeypatch,
        capsys,
        "predict",
        napari_run,
        tmp_path / "slide.zarr",
        "--out",
        tmp_path / "cli",
        "--format",
        "zarr",
        "--quiet",
    )
    assert code == 0, err
    expected = np.asarray(open_level(tmp_path / "cli" / "slide.zarr").array[...])
    viewer.add_image(image, name="slide", metadata={"biomedseg_path": str(tmp_path / "slide.zarr")})
    predict = w["predict"]
    predict.layer.reset_choices()
    predict.layer.value, predict.out.value = "slide", tmp_path / "gui"
    predict.predict()
    wait(qtbot, predict)
    labels = viewer.layers[f"{Path(napari_run).name}: slide"]
    assert "streamed" in predict.job.status.value
    level0 = labels.data[0] if labels.multiscale else labels.data
    assert not isinstance(level0, np.ndarray)  # opened lazily (a zarr array), not read into memory
    np.testing.assert_array_equal(np.asarray(level0[...]), expected)


def test_a_dropped_run_folder_opens_its_validation_images_with_predictions(viewer_with_model, napari_run):
    from biomedseg.napari_plugin.readers import get_reader
    from biomedseg.runs import open_run

    viewer, _ = viewer_with_model
    layers = viewer.open(napari_run, plugin="biomedseg")
    val = open_run(napari_run).dataset().split["val"]
    assert [layer.name for layer in layers] == [name for v in val for name in (v, f"{Path(napari_run).name}: {v}")]
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == ["Image", "Labels"] * len(val)
    assert get_reader(str(napari_run)) is not None and get_reader(str(napari_run / "checkpoints")) is None


def test_review_in_suggest_order(viewer_with_model, napari_run, qtbot, tmp_path):
    """With "suggest order" the images come in ``biomedseg suggest``'s order."""
    from biomedseg.data.synthetic import make_synthetic_dataset
    from biomedseg.trust.suggest import SuggestOptions, suggest

    viewer, w = viewer_with_model
    pool = make_synthetic_dataset(tmp_path / "pool", n_train=5, n_test=0, size=(64, 96), seed=7) / "images"
    expected = [
        Path(r["file"]) for r in suggest(napari_run, [str(pool)], SuggestOptions(n=5, out=tmp_path / "s.csv"))["rows"]
    ]
    review = w["review"]
    review.folder.value, review.use_suggest.value = pool, True
    review.rank()
    wait(qtbot, review)
    assert review.order == expected and len(expected) == 5, review.job.status.value
    assert "in suggest order" in review.job.status.value


def test_cancel_stops_ranking_and_adds_nothing(viewer_with_model, napari_data, qtbot, monkeypatch):
    viewer, w = viewer_with_model
    review = w["review"]
    scored = type(review)._scored

    def cancel_after_first(self, item):
        scored(self, item)
        self.job.cancel()

    # patched on the class: undoing an instance patch deletes the attribute (pytest >= 9.2), which a
    # magicgui container takes as removing a widget
    monkeypatch.setattr(type(review), "_scored", cancel_after_first)
    review.folder.value = napari_data
    review.rank()
    wait(qtbot, review)
    assert "cancelled" in review.job.status.value
    assert len(review.results) < 10 and review.order == [] and "review: prediction" not in viewer.layers


def test_cancel_stops_training_after_the_epoch(viewer_with_model, napari_data, qtbot, tmp_path, monkeypatch):
    from biomedseg.runs import open_run

    viewer, w = viewer_with_model
    retrain = w["retrain"]
    epoch = type(retrain)._epoch

    def cancel_after_first(self, item):
        epoch(self, item)
        self.job.cancel()

    monkeypatch.setattr(type(retrain), "_epoch", cancel_after_first)
    retrain.data.value, retrain.out.value, retrain.time_budget.value = napari_data, tmp_path / "stopped", ""
    retrain.settings.value = "epochs=20 seed=0 patch_size=64 batch_size=4 iterations_per_epoch=2 num_threads=1"
    retrain.train()
    wait(qtbot, retrain)
    assert retrain.new_run is not None and "stopped early" in retrain.job.status.value
    rows = (open_run(retrain.new_run).paths.metrics).read_text().strip().splitlines()
    assert 2 <= len(rows) <= 3  # the header and the first epoch (at most one more was under way)


def test_an_exported_file_predicts_as_the_command_line_and_cannot_be_fine_tuned(
    viewer_with_model, napari_data, napari_run, qtbot, tmp_path, monkeypatch, capsys
):
    from biomedseg.export.writer import export_run
    from biomedseg.io.mask_encoding import read_written_mask
    from biomedseg.napari_plugin.widgets.common import current_model

    viewer, w = viewer_with_model
    exported = export_run(napari_run, "torchscript", tmp_path / "model.pt").path
    w["model"].path.value = exported
    w["model"].load()
    wait(qtbot, w["model"])
    assert current_model(viewer).source == exported and "exported file" in w["model"].summary.value
    image = napari_data / "images" / "syn_009.png"
    code, err = cli(monkeypatch, capsys, "predict", exported, image, "--out", tmp_path / "pred", "--quiet")
    assert code == 0, err
    layer = open_image(viewer, image)
    w["predict"].layer.reset_choices()
    w["predict"].layer.value = layer.name
    w["predict"].predict()
    wait(qtbot, w["predict"])
    labels = viewer.layers[f"model.pt: {layer.name}"]
    np.testing.assert_array_equal(np.asarray(labels.data), read_written_mask(tmp_path / "pred" / "syn_009.png"))
    retrain = w["retrain"]
    retrain.data.value, retrain.out.value = napari_data, tmp_path / "child"
    retrain.train()
    wait(qtbot, retrain)
    assert "--init needs a run folder" in notifications()[-1] and not (tmp_path / "child").exists()
