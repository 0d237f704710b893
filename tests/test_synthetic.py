"""Tests of the synthetic demo dataset (biomedseg.data.synthetic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.data.synthetic import CLASSES, make_synthetic_dataset, render_sample


def _samples(n, seed=0, size=(256, 256), n_channels=1):
    return [render_sample(np.random.default_rng([seed, i]), size, n_channels) for i in range(n)]


@pytest.fixture(scope="module")
def samples():
    return _samples(8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=4, n_test=2, size=(96, 128), seed=3)


def _file_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _best_threshold_dice(grey: np.ndarray, truth: np.ndarray) -> float:
    """Best Dice of ``grey >= t`` or ``grey < t`` over all 8-bit thresholds ``t``."""
    hist_fg = np.bincount(grey[truth].ravel(), minlength=256).astype(float)
    hist_all = np.bincount(grey.ravel(), minlength=256).astype(float)
    n_fg = truth.sum()
    above = 2 * hist_fg[::-1].cumsum()[::-1] / (hist_all[::-1].cumsum()[::-1] + n_fg)
    below = 2 * hist_fg.cumsum() / (hist_all.cumsum() + n_fg)
    return float(max(above.max(), below.max()))


def test_render_sample_shapes_and_values(samples):
    for image, mask in samples:
        assert image.shape == (256, 256, 1) and image.dtype == np.uint8
        assert mask.shape == (256, 256) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1, 2}  # both foreground classes in every image
        assert 20 < image.mean() < 200 and image.std() > 10


def test_class_fractions_in_range(samples):
    for _, mask in samples:
        frac = np.bincount(mask.ravel(), minlength=3) / mask.size
        assert 0.15 <= frac[1] <= 0.30, frac
        assert 0.02 <= frac[2] <= 0.05, frac


def test_render_sample_deterministic():
    ((a_img, a_mask),) = _samples(1, seed=5)
    ((b_img, b_mask),) = _samples(1, seed=5)
    ((c_img, c_mask),) = _samples(1, seed=6)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_mask, c_mask)


def test_not_solvable_by_a_global_threshold(samples):
    for image, mask in samples:
        grey = image[:, :, 0]
        assert _best_threshold_dice(grey, mask == 1) < 0.8
        assert _best_threshold_dice(grey, mask == 2) < 0.8


def test_objects_have_local_contrast(samples):
    # learnable: filaments are brighter than the pixels right next to them, cells differ
    # from their surroundings on average
    from scipy import ndimage as ndi

    for image, mask in samples:
        grey = image[:, :, 0].astype(float)
        fil = mask == 2
        ring = ndi.binary_dilation(fil, iterations=3) & ~ndi.binary_dilation(fil) & (mask == 0)
        assert grey[fil].mean() > grey[ring].mean() + 15
        cell = mask == 1
        around = ndi.binary_dilation(cell, iterations=6) & ~ndi.binary_dilation(cell, iterations=2)
        assert abs(grey[ndi.binary_erosion(cell, iterations=2)].mean() - grey[around].mean()) > 8


def test_rgb_option():
    image, mask = render_sample(np.random.default_rng(0), (96, 128), 3)
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8 and mask.shape == (96, 128)
    assert not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def test_bad_arguments():
    with pytest.raises(UserError):
        render_sample(np.random.default_rng(0), (256, 256), 2)
    with pytest.raises(UserError):
        render_sample(np.random.default_rng(0), (32, 32), 1)
    with pytest.raises(UserError):
        make_synthetic_dataset("/nonexistent-never-created", n_train=0)


def test_dataset_layout_and_json(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["name"] == "synthetic_cells"
    assert meta["classes"] == CLASSES == ["background", "cell", "filament"]
    assert meta["license"] == "CC0" and "seed 3" in meta["source"]
    ids = [f"syn_{i:03d}" for i in range(6)]
    assert meta["split"]["train"] == ids[:4] and meta["split"]["test"] == ids[4:]
    assert sorted(p.stem for p in (dataset / "images").iterdir()) == ids
    assert sorted(p.stem for p in (dataset / "masks").iterdir()) == ids
    fractions = meta["class_pixel_fraction"]
    assert set(fractions) == set(CLASSES) and abs(sum(fractions.values()) - 1) < 1e-3
    for sample_id in ids:
        image = Image.open(dataset / "images" / f"{sample_id}.png")
        mask = Image.open(dataset / "masks" / f"{sample_id}.png")
        assert image.mode == "L" and mask.mode == "L" and image.size == mask.size == (128, 96)
        assert set(np.unique(np.asarray(mask))) == {0, 1, 2}


def test_dataset_deterministic(tmp_path, dataset):
    again = make_synthetic_dataset(tmp_path / "again", n_train=4, n_test=2, size=(96, 128), seed=3)
    assert _file_bytes(again) == _file_bytes(dataset)
    other = make_synthetic_dataset(tmp_path / "other", n_train=4, n_test=2, size=(96, 128), seed=4)
    a, b = _file_bytes(other), _file_bytes(dataset)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.startswith("images/"))


def test_dataset_rgb_and_overwrite(tmp_path):
    out = make_synthetic_dataset(tmp_path / "d", n_train=3, n_test=2, size=(64, 64), seed=1)
    (out / "images" / "notes.txt").write_text("keep me")
    out = make_synthetic_dataset(tmp_path / "d", n_train=2, n_test=1, size=(64, 64), seed=1, n_channels=3)
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "notes.txt",
        "syn_000.png",
        "syn_001.png",
        "syn_002.png",
    ]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == ["syn_000", "syn_001", "syn_002"]
    image = np.asarray(Image.open(out / "images" / "syn_000.png"))
    assert image.shape == (64, 64, 3)
    mask = np.asarray(Image.open(out / "masks" / "syn_000.png"))
    assert mask.shape == (64, 64) and mask.max() <= 2
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["split"] == {"train": ["syn_000", "syn_001"], "test": ["syn_002"]}
