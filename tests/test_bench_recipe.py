"""benchmarks/recipe_vs_plan.py: its scorer, budget parser, image reading and cache key (no training)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_vs_plan.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("recipe_vs_plan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_parser(bench):
    assert bench.parse_budget("20s") == 20
    assert bench.parse_budget("15m") == 900
    assert bench.parse_budget("1.5h") == 5400
    assert bench.parse_budget("42") == 42
    for bad in ("", "0m", "-3m", "15x", "m"):
        with pytest.raises(ValueError):
            bench.parse_budget(bad)


def test_foreground_classes(bench):
    assert bench.foreground_classes(["background", "vessel"]) == [1]
    assert bench.foreground_classes(["a", "Background", "b"]) == [0, 2]
    # no class named background (isbi2012_em): every class is scored
    assert bench.foreground_classes(["membrane", "cell_interior"]) == [0, 1]


def test_pooled_dice_sums_counts_over_images(bench):
    classes = ["background", "a", "b"]
    t1, p1 = np.array([[0, 1], [1, 2]]), np.array([[0, 1], [0, 2]])  # a: TP 1 FN 1; b: TP 1
    t2, p2 = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 2, 0]])  # a: TP 2 FN 2; b: FP 1
    counts = bench.dice_counts(p1, t1, 3) + bench.dice_counts(p2, t2, 3)
    assert counts[1].tolist() == [3, 0, 3] and counts[2].tolist() == [1, 1, 0]
    per_class, mean = bench.pooled_dice(counts, classes)
    assert per_class["a"] == pytest.approx(6 / 9)
    assert per_class["b"] == pytest.approx(2 / 3)
    assert mean == pytest.approx((6 / 9 + 2 / 3) / 2)  # background not in the mean
    # pooled over the images, not the mean of per-image Dice (b: 1.0 on image 1, 0.0 on image 2)
    assert per_class["b"] != pytest.approx(0.5)


def test_pooled_dice_absent_class_left_out(bench):
    counts = bench.dice_counts(np.array([[0, 1]]), np.array([[0, 1]]), 3)
    per_class, mean = bench.pooled_dice(counts, ["background", "a", "b"])
    assert math.isnan(per_class["b"]) and mean == 1.0
    with pytest.raises(ValueError):
        bench.dice_counts(np.zeros((2, 2)), np.zeros((2, 3)), 2)


def test_read_image_scales_by_dtype_and_drops_alpha(bench, tmp_path):
    import tifffile
    from PIL import Image

    tifffile.imwrite(tmp_path / "a.tif", np.array([[0, 65535]], np.uint16))
    Image.fromarray(np.full((2, 2, 4), 51, np.uint8), "RGBA").save(tmp_path / "b.png")
    a, b = bench.read_image(tmp_path / "a.tif"), bench.read_image(tmp_path / "b.png")
    assert a.shape == (1, 2, 1) and a.dtype == np.float32 and a.max() == 1.0 and a.min() == 0.0
    assert b.shape == (2, 2, 3) and np.allclose(b, 0.2)


def test_cache_key_depends_on_cpu_threads_and_budget(bench):
    cpu = {"model": "X", "avx512_bf16": False, "amx_bf16": False}
    base = bench.cache_path("recipe", "d", 900, 2, cpu)
    assert base != bench.cache_path("recipe", "d", 900, 1, cpu)
    assert base != bench.cache_path("recipe", "d", 60, 2, cpu)
    assert base != bench.cache_path("recipe", "d", 900, 2, {**cpu, "amx_bf16": True})
    assert base == bench.cache_path("recipe", "d", 900.0, 2, dict(cpu))
