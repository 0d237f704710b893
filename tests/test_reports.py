"""Overlays, curves and the HTML report."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.core.render import (
    ERROR_COLORS,
    class_colors,
    class_overlay,
    colorize_mask,
    error_overlay,
    overlay_panel,
    to_display_rgb,
)
from biomedseg.metrics.pixel import MetricAccumulator


def _blend(grey: float, color, alpha: float = 0.5) -> np.ndarray:
    return np.rint(grey * (1 - alpha) + np.asarray(color, float) * alpha).astype(np.uint8)


def test_package_import_does_not_load_matplotlib():
    code = "import sys, biomedseg.reports, biomedseg.reports.html; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_to_display_rgb_uint8_and_stretch():
    grey8 = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    rgb = to_display_rgb(grey8)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == grey8[..., 0]).all() and (rgb[..., 2] == grey8[..., 0]).all()

    ramp = np.linspace(0, 1000, 101 * 101).reshape(101, 101).astype(np.uint16)
    ramp[0, 0] = 65535  # one hot pixel must not flatten the contrast
    out = to_display_rgb(ramp[..., None])
    assert out.dtype == np.uint8 and out.shape == (101, 101, 3)
    assert out[50, 50, 0] == pytest.approx(128, abs=3)  # middle of the ramp -> mid grey
    assert out.max() == 255 and out.min() == 0

    flat = np.full((5, 5), 7.5, dtype=np.float32)
    assert (to_display_rgb(flat) == 0).all()
    with_nan = np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32)
    assert to_display_rgb(with_nan)[0, 1, 0] == 0


def test_error_overlay_colours_at_known_pixels():
    image = np.full((2, 3, 1), 100, dtype=np.uint8)
    target = np.array([[1, 1, 0], [0, 2, 0]], dtype=np.uint8)
    pred = np.array([[1, 0, 1], [0, 2, 2]], dtype=np.uint8)
    out = error_overlay(image, pred, target, class_index=1)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], _blend(100, ERROR_COLORS["TP"]))
    np.testing.assert_array_equal(out[0, 1], _blend(100, ERROR_COLORS["FN"]))
    np.testing.assert_array_equal(out[0, 2], _blend(100, ERROR_COLORS["FP"]))
    np.testing.assert_array_equal(out[1, 0], [100, 100, 100])  # TN untouched
    np.testing.assert_array_equal(out[1, 1], [100, 100, 100])  # other class's TP = TN here
    # three clearly different colours
    assert len({tuple(out[0, 0]), tuple(out[0, 1]), tuple(out[0, 2])}) == 3
    # outside the valid region nothing is coloured
    valid = np.array([[True, False, False], [True, True, True]])
    masked = error_overlay(image, pred, target, 1, valid=valid)
    np.testing.assert_array_equal(masked[0, 1], [100, 100, 100])
    np.testing.assert_array_equal(masked[0, 0], out[0, 0])


def test_error_overlay_uses_grey_of_colour_image():
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    image[..., 0] = 200  # pure red image -> grey 0.299*200 = 60
    out = error_overlay(image, np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.uint8), 1)
    np.testing.assert_array_equal(out[0, 0], [60, 60, 60])


def test_class_overlay_and_colorize():
    image = np.full((2, 2, 3), 50, dtype=np.uint8)
    mask = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    pal = class_colors(3)
    out = class_overlay(image, mask, alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [50, 50, 50])  # background transparent
    np.testing.assert_array_equal(out[0, 1], _blend(50, pal[1]))
    np.testing.assert_array_equal(out[1, 0], _blend(50, pal[2]))
    custom = class_overlay(image, mask, colors=[(0, 0, 0), None, (255, 0, 0)], alpha=1.0)
    np.testing.assert_array_equal(custom[0, 1], [50, 50, 50])  # None = transparent
    np.testing.assert_array_equal(custom[1, 0], [255, 0, 0])

    col = colorize_mask(mask)
    assert col.shape == (2, 2, 3) and col.dtype == np.uint8
    np.testing.assert_array_equal(col[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(col[0, 1], pal[1])
    many = class_colors(40)
    assert len(many) == 40 and len(set(many)) == 40


def test_class_overlay_equals_a_float_blend_on_any_image():
    """The lookup-table overlay gives the same bytes as blending a float copy of the image per
    class (uint8 grey, uint16 colour, float, background None, a transparent class)."""
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, (40, 30), dtype=np.uint8),
        rng.integers(0, 65535, (20, 25, 3), dtype=np.uint16),
        rng.random((15, 10)).astype(np.float32),
    ]
    for image in images:
        mask = rng.integers(0, 5, image.shape[:2]).astype(np.uint8)
        for colors, background, alpha in [
            (None, 0, 0.45),
            ([(9, 8, 7), None, (1, 2, 3), (200, 0, 5), (4, 4, 4)], None, 0.3),
        ]:
            expected = to_display_rgb(image).astype(np.float32)
            palette = colors or class_colors(5)
            for c in range(5):
                if c != background and palette[c] is not None:
                    sel = mask == c
                    expected[sel] = expected[sel] * (1 - alpha) + np.asarray(palette[c], np.float32) * alpha
            expected = np.clip(np.rint(expected), 0, 255).astype(np.uint8)
            got = class_overlay(image, mask, colors=colors, alpha=alpha, background=background)
            np.testing.assert_array_equal(got, expected)


def test_class_argmax_equals_numpy_argmax_with_ties():
    from biomedseg.core.labels import class_argmax

    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 6):
        p = rng.integers(0, 4, (k, 33, 17)).astype(np.float32)  # many ties: the first maximum wins
        got = class_argmax(p)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, p.argmax(0))


def test_overlay_panel_shapes_and_labels():
    rng = np.random.default_rng(1)
    h, w = 64, 96
    image = np.full((h, w, 1), 120, dtype=np.uint8)  # no overlay pixel is near black/white
    target = rng.integers(0, 3, (h, w), dtype=np.uint8)
    pred = rng.integers(0, 3, (h, w), dtype=np.uint8)
    panel = overlay_panel(image, pred, target, ["bg", "cell", "filament"])
    assert panel.shape == (h, 2 * w, 3) and panel.dtype == np.uint8
    # right half away from the label is the error overlay of class 2
    np.testing.assert_array_equal(panel[32:, w + 48 :], error_overlay(image, pred, target, 2)[32:, 48:])
    # the label draws light text on a black box in the top-left corner of each panel
    for corner in (panel[:12, :40], panel[:12, w : w + 40]):
        assert (corner == 0).all(axis=2).any() and (corner.min(axis=2) > 200).any()
    unlabelled = overlay_panel(image, pred, target, ["bg", "cell", "filament"], label=False)
    np.testing.assert_array_equal(unlabelled[:, :w], error_overlay(image, pred, target, 1))
    binary = overlay_panel(image, (pred > 0).astype(np.uint8), (target > 0).astype(np.uint8), ["bg", "fg"])
    assert binary.shape == (h, w, 3)
    assert overlay_panel(image, pred, target, ["a", "b", "c"], background=None).shape == (h, 3 * w, 3)


FULL_CSV = """epoch,train_loss,val_loss,val_dice,val_iou,val_precision,val_recall,val_f1,val_fp,val_fn,lr,seconds
1,0.9,0.8,0.3,0.2,0.4,0.3,0.3,500,400,0.001,2.0
2,0.7,0.6,0.5,0.35,0.6,0.5,0.5,300,250,0.001,2.1
3,0.5,0.55,0.6,0.45,0.65,0.6,0.6,200,210,0.0005,2.0
"""


def _png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_plot_curves_full_and_partial(tmp_path):
    from biomedseg.reports.curves import plot_curves, read_metrics_csv

    full = tmp_path / "full.csv"
    full.write_text(FULL_CSV)
    out = plot_curves(full, tmp_path / "a" / "curves.png")
    w, h = _png_size(out)
    assert w > 500 and h > 400

    partial = tmp_path / "partial.csv"  # no epoch, no precision/recall/fp/fn, empty cells
    partial.write_text("train_loss,val_loss,val_dice\n0.9,,0.2\n0.8,0.7,\n,0.6,0.4\n")
    data = read_metrics_csv(partial)
    assert data["epoch"] == [1.0, 2.0, 3.0]
    assert np.isnan(data["val_loss"][0]) and data["val_loss"][1] == 0.7
    out2 = plot_curves(partial, tmp_path / "b.png")
    assert _png_size(out2)[0] > 500

    header_only = tmp_path / "empty.csv"
    header_only.write_text("epoch,train_loss\n")
    assert plot_curves(header_only, tmp_path / "c.png").exists()
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["b.png", "c.png"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]

    with pytest.raises(UserError, match="missing.csv"):
        plot_curves(tmp_path / "missing.csv", tmp_path / "d.png")


def _evaluation(names):
    rng = np.random.default_rng(2)
    acc = MetricAccumulator(len(names), names)
    for i in range(4):
        t = rng.integers(0, len(names), (8, 8), dtype=np.uint8)
        p = t.copy()
        p[: i * 2] = 0  # image i has more errors as i grows
        acc.update(p, t, image_id=f"img_{i}")
    return acc


def test_html_report(tmp_path):
    from biomedseg.reports.curves import plot_curves
    from biomedseg.reports.html import write_evaluation_report

    names = ["background", "a<b", "filament & co"]
    acc = _evaluation(names)
    out_dir = tmp_path / "eval"
    ov_dir = out_dir / "overlays"
    ov_dir.mkdir(parents=True)
    overlays = []
    for i in range(2):
        p = ov_dir / f"img {i}.png"
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
        overlays.append(p)
    (tmp_path / "metrics.csv").write_text(FULL_CSV)
    curves = plot_curves(tmp_path / "metrics.csv", out_dir / "curves.png")

    report = write_evaluation_report(
        out_dir, acc.summary(), acc.per_image_rows(), overlays, title="Run <1>", curves_png=curves
    )
    assert report == out_dir / "report.html"
    text = report.read_text(encoding="utf-8")
    # escaping
    assert "a&lt;b" in text and "a<b" not in text
    assert "filament &amp; co" in text
    assert "<title>Run &lt;1&gt;</title>" in text
    # one per-class row per class, with the counts
    s = acc.summary()
    for name in ("background", "a&lt;b", "filament &amp; co"):
        assert re.search(rf"<tr><td>{re.escape(name)}</td>", text)
    fil = s["per_class"]["filament & co"]
    row = re.search(r"<tr><td>filament &amp; co</td>(.*?)</tr>", text).group(1)
    assert f"{fil['dice']:.4f}" in row and f">{fil['fn']}<" in row
    # bar chart, curves and thumbnails by relative links; legend colours
    assert (out_dir / "class_metrics.png").exists()
    assert 'src="class_metrics.png"' in text and 'src="curves.png"' in text
    assert 'href="overlays/img%200.png"' in text
    assert str(tmp_path) not in text  # no absolute paths
    for r, g, b in ERROR_COLORS.values():
        assert f"rgb({r}, {g}, {b})" in text
    # nothing external
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # per-image table: worst image first
    order = [m for m in re.findall(r"<td>(img_\d)</td>", text)]
    dices = {r["id"]: r["image_dice"] for r in acc.per_image_rows()}
    assert order == sorted(dices, key=dices.get)
    assert order[0] == "img_3"


def test_html_report_copies_pictures_from_outside_its_folder(tmp_path):
    """The run's curves.png lives in the run folder: the report folder gets its own copy, so it
    still shows it once the run is moved or deleted."""
    from biomedseg.reports.curves import plot_curves
    from biomedseg.reports.html import write_evaluation_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(FULL_CSV)
    curves = plot_curves(run / "metrics.csv", run / "curves.png")
    out_dir = tmp_path / "eval"
    acc = _evaluation(["background", "cell"])
    report = write_evaluation_report(out_dir, acc.summary(), acc.per_image_rows(), [], curves_png=curves)
    text = report.read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]+)"', text)
    assert srcs and all(".." not in s and "/" not in s for s in srcs)  # every picture inside the report folder
    assert 'src="training_curves.png"' in text
    assert (out_dir / "training_curves.png").read_bytes() == curves.read_bytes()
    import shutil

    shutil.rmtree(run)  # the run goes away: the report is still whole
    assert all((out_dir / s).is_file() for s in srcs)
