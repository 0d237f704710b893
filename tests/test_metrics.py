"""Metrics against hand-computed values on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biomedseg.metrics.pixel import MetricAccumulator, confusion_matrix, image_dice, scores_from_confusion

# Binary: target [[0,1],[1,1]], pred [[1,1],[0,1]] -> cm [[0,1],[1,2]]
BIN_T = np.array([[0, 1], [1, 1]], dtype=np.uint8)
BIN_P = np.array([[1, 1], [0, 1]], dtype=np.uint8)

# 3 classes: cm rows truth [[1,1,0],[0,2,0],[1,0,1]]
TRI_T = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
TRI_P = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
TRI_NAMES = ["background", "cell", "filament"]


def test_confusion_matrix_binary_by_hand():
    cm = confusion_matrix(BIN_P, BIN_T, 2)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[0, 1], [1, 2]])


def test_confusion_matrix_three_classes_by_hand():
    cm = confusion_matrix(TRI_P, TRI_T, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_confusion_matrix_matches_loop_reference():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, size=(13, 17), dtype=np.uint8)
    p = rng.integers(0, 4, size=(13, 17), dtype=np.uint8)
    ref = np.zeros((4, 4), dtype=np.int64)
    for a, b in zip(t.ravel(), p.ravel()):
        ref[a, b] += 1
    np.testing.assert_array_equal(confusion_matrix(p, t, 4), ref)


def test_confusion_matrix_valid_mask_restricts_pixels():
    valid = np.array([[True, False], [True, True]])  # drops the (0,1) pixel: truth 1, pred 1
    cm = confusion_matrix(BIN_P, BIN_T, 2, valid=valid)
    np.testing.assert_array_equal(cm, [[0, 1], [1, 1]])
    assert confusion_matrix(BIN_P, BIN_T, 2, valid=np.zeros((2, 2), bool)).sum() == 0


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([[0, 3]]), np.array([[0, 1]]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8), 2)


def test_scores_binary_by_hand():
    s = scores_from_confusion(confusion_matrix(BIN_P, BIN_T, 2), ["bg", "fg"])
    fg = s["per_class"]["fg"]
    assert (fg["tp"], fg["fp"], fg["fn"], fg["tn"], fg["support"]) == (2, 1, 1, 0, 3)
    assert fg["dice"] == pytest.approx(4 / 6)
    assert fg["iou"] == pytest.approx(2 / 4)
    assert fg["precision"] == pytest.approx(2 / 3)
    assert fg["recall"] == pytest.approx(2 / 3)
    assert fg["f1"] == pytest.approx(fg["dice"])
    bg = s["per_class"]["bg"]
    assert bg["dice"] == 0.0 and bg["precision"] == 0.0 and bg["recall"] == 0.0
    # means over foreground only
    assert s["dice"] == pytest.approx(4 / 6)
    assert s["iou"] == pytest.approx(0.5)
    assert s["pixel_accuracy"] == pytest.approx(0.5)
    assert s["n_pixels"] == 4
    assert (s["fp"], s["fn"]) == (1, 1)


def test_scores_three_classes_by_hand():
    s = scores_from_confusion(confusion_matrix(TRI_P, TRI_T, 3), TRI_NAMES)
    cell, fil = s["per_class"]["cell"], s["per_class"]["filament"]
    assert (cell["tp"], cell["fp"], cell["fn"]) == (2, 1, 0)
    assert (fil["tp"], fil["fp"], fil["fn"], fil["support"]) == (1, 0, 1, 2)
    assert s["per_class"]["background"]["tn"] == 3
    assert cell["dice"] == pytest.approx(0.8)
    assert fil["dice"] == pytest.approx(2 / 3)
    assert s["dice"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert s["iou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["recall"] == pytest.approx((1 + 1 / 2) / 2)
    assert s["f1"] == pytest.approx(s["dice"])
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)
    assert (s["fp"], s["fn"]) == (1, 1)


def test_background_none_averages_all_classes():
    cm = confusion_matrix(BIN_P, BIN_T, 2)
    s = scores_from_confusion(cm, ["bg", "fg"], background=None)
    assert s["dice"] == pytest.approx((0.0 + 4 / 6) / 2)
    assert (s["fp"], s["fn"]) == (2, 2)
    # another background index is left out instead of 0
    s1 = scores_from_confusion(cm, ["bg", "fg"], background=1)
    assert s1["dice"] == pytest.approx(0.0)


def test_empty_denominator_conventions():
    # class 1 absent everywhere, class 2 only in truth (missed), class 3 only predicted
    t = np.array([[0, 2, 0, 0]], dtype=np.uint8)
    p = np.array([[0, 0, 3, 0]], dtype=np.uint8)
    s = scores_from_confusion(confusion_matrix(p, t, 4), ["bg", "absent", "missed", "spurious"])
    absent, missed, spurious = (s["per_class"][n] for n in ("absent", "missed", "spurious"))
    for key in ("dice", "iou", "precision", "recall", "f1"):
        assert absent[key] == 1.0
        assert missed[key] == 0.0
        assert spurious[key] == 0.0
    assert all(not math.isnan(v) for v in (s["dice"], s["precision"], s["recall"]))


def test_image_dice_kaggle_empty_convention():
    empty = np.zeros((4, 4), dtype=np.uint8)
    assert image_dice(empty, empty, 2) == 1.0
    one = empty.copy()
    one[1, 1] = 1
    assert image_dice(one, empty, 2) == 0.0
    assert image_dice(empty, one, 2) == 0.0
    assert image_dice(BIN_P, BIN_T, 2) == pytest.approx(4 / 6)
    # 3 classes: mean of per-class Dice of this image
    assert image_dice(TRI_P, TRI_T, 3) == pytest.approx((0.8 + 2 / 3) / 2)
    assert image_dice(TRI_P, TRI_T, 3, background=None) == pytest.approx((2 * 1 / 4 + 0.8 + 2 / 3) / 3)


def test_accumulator_pools_and_keeps_rows():
    acc = MetricAccumulator(3, TRI_NAMES, background=0)
    empty = np.zeros((2, 3), dtype=np.uint8)
    r1 = acc.update(TRI_P, TRI_T, image_id="a")
    r2 = acc.update(empty, empty, image_id="b")
    assert len(acc) == 2
    np.testing.assert_array_equal(acc.cm, confusion_matrix(TRI_P, TRI_T, 3) + [[6, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert r1["id"] == "a" and r2["id"] == "b"
    assert r1["image_dice"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert r1["dice_cell"] == pytest.approx(0.8) and r1["dice_filament"] == pytest.approx(2 / 3)
    assert "dice_background" not in r1
    assert (r1["fp"], r1["fn"], r1["n_pixels"]) == (1, 1, 6)
    assert r2["image_dice"] == 1.0
    s = acc.summary()
    # pooled Dice does not change with an all-background image; the mean over images does
    assert s["dice"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert s["image_dice"] == pytest.approx(((0.8 + 2 / 3) / 2 + 1.0) / 2)
    assert s["n_images"] == 2 and s["n_pixels"] == 12
    rows = acc.per_image_rows()
    rows[0]["id"] = "changed"
    assert acc.per_image_rows()[0]["id"] == "a"  # copies are returned
    acc.reset()
    assert len(acc) == 0 and acc.cm.sum() == 0 and math.isnan(acc.summary()["image_dice"])


def test_accumulator_valid_mask():
    acc = MetricAccumulator(2, ["bg", "vessel"])
    valid = np.array([[False, True], [True, True]])  # drops the FP pixel at (0,0)
    row = acc.update(BIN_P, BIN_T, valid=valid)
    assert row["fp"] == 0 and row["fn"] == 1 and row["n_pixels"] == 3
    assert row["image_dice"] == pytest.approx(4 / 5)
    assert acc.summary()["per_class"]["vessel"]["precision"] == 1.0
