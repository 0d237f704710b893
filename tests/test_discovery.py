"""Tests for biomedseg.data.discovery and biomedseg.data.splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.data.discovery import DataSource, Sample, check_pairs, find_pairs, list_inputs, mask_base, resolve_data
from biomedseg.data.splits import make_split


def _img(path: Path, h=8, w=10, value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, np.full((h, w), value, np.uint8))
    else:
        Image.fromarray(np.full((h, w), value, np.uint8)).save(path)
    return path


def _dataset(root: Path, names=("a", "b", "c"), meta=None) -> Path:
    for n in names:
        _img(root / "images" / f"{n}.png")
        _img(root / "masks" / f"{n}.png")
    if meta is not None:
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _error(fn, *args) -> str:
    with pytest.raises(UserError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --- resolve_data ---------------------------------------------------------------------------


def test_resolve_data_folder_with_meta(tmp_path):
    root = _dataset(tmp_path / "d", meta={"classes": ["background", "cell"]})
    src = resolve_data(root)
    assert src == DataSource(root, root / "images", root / "masks", {"classes": ["background", "cell"]})


def test_resolve_data_without_meta(tmp_path):
    src = resolve_data(_dataset(tmp_path / "d"))
    assert src.meta is None


def test_resolve_data_masks_inside_images(tmp_path):
    root = tmp_path / "nerve"
    _img(root / "images" / "1_1.tif")
    _img(root / "images" / "1_1_mask.tif")
    src = resolve_data(root)
    assert src.images_dir == src.masks_dir == root / "images"


def test_resolve_data_flat_folder_with_mask_files(tmp_path):
    _img(tmp_path / "train" / "1_1.tif")
    _img(tmp_path / "train" / "1_1_mask.tif")
    src = resolve_data(tmp_path / "train")
    assert src.images_dir == src.masks_dir == tmp_path / "train"


def test_resolve_data_explicit_folders(tmp_path):
    root = _dataset(tmp_path / "d")
    src = resolve_data(images=root / "images", masks=root / "masks")
    assert (src.images_dir, src.masks_dir, src.root, src.meta) == (root / "images", root / "masks", root, None)


@pytest.mark.parametrize(
    "case", ["no_data", "missing_root", "missing_images", "missing_masks", "missing_explicit_masks"]
)
def test_resolve_data_missing_folders(tmp_path, case):
    root = tmp_path / "d"
    if case == "no_data":
        assert "no data given" in _error(resolve_data)
        return
    if case == "missing_root":
        assert _error(resolve_data, root) == f"{root}: folder not found"
        return
    if case == "missing_images":
        (root / "masks").mkdir(parents=True)
        assert _error(resolve_data, root) == f"{root / 'images'}: folder not found"
        return
    _img(root / "images" / "a.png")
    if case == "missing_masks":
        assert _error(resolve_data, root).startswith(f"{root / 'masks'}: folder not found")
    else:
        msg = _error(resolve_data, None, root / "images", tmp_path / "nope")
        assert msg == f"{tmp_path / 'nope'}: folder not found"


def test_resolve_data_bad_dataset_json(tmp_path):
    root = _dataset(tmp_path / "d")
    (root / "dataset.json").write_text("{not json")
    assert _error(resolve_data, root).startswith(f"{root / 'dataset.json'}: cannot read")


@pytest.mark.parametrize("layout", ["standard", "flat_with_masks_folder", "flat_numbered", "masks_in_images"])
def test_training_and_audit_resolve_a_data_folder_alike(tmp_path, layout):
    """One resolver: ``resolve_data`` (training) and ``scan_data`` (audit, tiling) find the same
    folders; before, the audit also took a flat image folder next to ``masks/``, training not."""
    from biomedseg.data.discovery import resolve_folders
    from biomedseg.data.inventory import scan_data

    root = tmp_path / "d"
    if layout == "standard":
        _dataset(root)
    elif layout == "flat_with_masks_folder":
        _img(root / "a.png")
        _img(root / "masks" / "a.png")
    elif layout == "flat_numbered":
        _img(root / "a.png")
        _img(root / "a_mask_1.png")
    else:
        _img(root / "images" / "a.png")
        _img(root / "images" / "a_mask.png")
    folders = resolve_folders(root)
    scan = scan_data(root)
    assert (scan.root, scan.images_dir, scan.masks_dir) == folders
    src = resolve_data(root)
    assert (src.root, src.images_dir, src.masks_dir) == folders


def test_flat_image_folder_without_masks(tmp_path):
    """Images only: the audit scans them (no mask folder), training names the missing masks."""
    from biomedseg.data.inventory import scan_data

    root = tmp_path / "only"
    _img(root / "a.png")
    scan = scan_data(root)
    assert (scan.images_dir, scan.masks_dir) == (root, None)
    assert _error(resolve_data, root).startswith(f"{root / 'masks'}: folder not found")


# --- find_pairs -------------------------------------------------------------------------------


def test_mask_base():
    assert mask_base("x_mask") == "x" and mask_base("x-LABEL") == "x"
    assert mask_base("x_labels") == "x" and mask_base("x_GT") == "x"
    assert mask_base("x") is None and mask_base("_mask") is None


def test_find_pairs_all_conventions_and_extensions(tmp_path):
    stems = {
        "a": "a.png",
        "b": "b_mask.png",
        "c": "c-mask.tif",
        "d": "d_label.png",
        "e": "e_labels.bmp",
        "f": "f-label.png",
        "g": "g_seg.png",
        "h": "h_GT.png",
        "i10": "i10_Mask.png",
        "i2": "i2.png",
    }
    for stem, mask in stems.items():
        _img(tmp_path / "images" / f"{stem}.jpg")
        _img(tmp_path / "masks" / mask)
    samples = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert [s.id for s in samples] == ["a", "b", "c", "d", "e", "f", "g", "h", "i2", "i10"]
    for s in samples:
        assert s.image == tmp_path / "images" / f"{s.id}.jpg"
        assert s.mask == tmp_path / "masks" / stems[s.id]


def test_find_pairs_ignores_hidden_and_non_image_files(tmp_path):
    root = _dataset(tmp_path)
    for junk in ("notes.txt", "meta.json", "table.csv", ".DS_Store", ".hidden.png"):
        (root / "images" / junk).write_text("x")
        (root / "masks" / junk).write_text("x")
    (root / "images" / "sub").mkdir()
    assert [s.id for s in find_pairs(root / "images", root / "masks")] == ["a", "b", "c"]


def test_find_pairs_same_folder_kaggle_nerve(tmp_path):
    for n in ("1_1", "1_2", "10_1"):
        _img(tmp_path / f"{n}.tif")
        _img(tmp_path / f"{n}_mask.tif")
    samples = find_pairs(tmp_path, tmp_path)
    assert [s.id for s in samples] == ["1_1", "1_2", "10_1"]
    assert samples[0] == Sample("1_1", tmp_path / "1_1.tif", tmp_path / "1_1_mask.tif")


def test_find_pairs_without_masks(tmp_path):
    _img(tmp_path / "x.png")
    _img(tmp_path / "x_mask.png")
    samples = find_pairs(tmp_path, None)
    assert [(s.id, s.mask) for s in samples] == [("x", None), ("x_mask", None)]


def test_find_pairs_unpaired_images_one_line(tmp_path):
    root = _dataset(tmp_path)
    for n in ("x", "y", "z"):
        _img(root / "images" / f"{n}.png")
    msg = _error(find_pairs, root / "images", root / "masks")
    assert msg == f"{root / 'masks'}: 3 images have no mask (x.png, y.png, z.png)"


def test_find_pairs_many_unpaired_and_orphan_masks_in_one_error(tmp_path):
    root = _dataset(tmp_path)
    for i in range(8):
        _img(root / "images" / f"n{i}.png")
    _img(root / "masks" / "ghost_mask.png")
    msg = _error(find_pairs, root / "images", root / "masks")
    assert "8 images have no mask (n0.png, n1.png, n2.png, n3.png, n4.png and 3 more)" in msg
    assert "1 mask has no image (ghost_mask.png)" in msg


def test_find_pairs_orphan_mask_same_folder(tmp_path):
    _img(tmp_path / "1_1.tif")
    _img(tmp_path / "1_1_mask.tif")
    _img(tmp_path / "2_1_mask.tif")
    msg = _error(find_pairs, tmp_path, tmp_path)
    assert msg == f"{tmp_path}: 1 mask has no image (2_1_mask.tif)"


def test_find_pairs_empty_and_missing_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("nothing here")
    assert _error(find_pairs, tmp_path / "images", tmp_path / "masks").startswith(
        f"{tmp_path / 'images'}: no images found"
    )
    msg = _error(find_pairs, tmp_path / "nope", tmp_path / "gone")
    assert msg == f"{tmp_path / 'nope'}: folder not found; {tmp_path / 'gone'}: folder not found"
    _img(tmp_path / "images" / "a.png")
    assert _error(find_pairs, tmp_path / "images", tmp_path / "masks") == (f"{tmp_path / 'masks'}: no masks found")


def test_find_pairs_ambiguous_and_duplicate(tmp_path):
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "images" / "a.tif")
    _img(tmp_path / "masks" / "a.png")
    _img(tmp_path / "masks" / "a_mask.png")
    msg = _error(find_pairs, tmp_path / "images", tmp_path / "masks")
    assert "2 images share the id a" in msg
    assert "2 masks match image a.png (a.png, a_mask.png)" in msg


# --- check_pairs -------------------------------------------------------------------------------


def test_check_pairs_ok(tmp_path):
    root = _dataset(tmp_path)
    assert check_pairs(find_pairs(root / "images", root / "masks")) is None


def test_check_pairs_size_mismatch(tmp_path):
    root = _dataset(tmp_path)
    _img(root / "masks" / "b.png", h=8, w=9)
    msg = _error(check_pairs, find_pairs(root / "images", root / "masks"))
    assert msg == f"{root / 'masks' / 'b.png'}: mask is 9x8 but its image is 10x8"


def test_check_pairs_collects_unreadable_and_mismatch(tmp_path):
    root = _dataset(tmp_path)
    (root / "images" / "a.png").write_text("I am text, not a PNG")
    (root / "masks" / "c.png").write_bytes(b"")
    _img(root / "masks" / "b.png", h=5, w=5)
    samples = find_pairs(root / "images", root / "masks")  # pairing does not open files
    msg = _error(check_pairs, samples)
    assert f"{root / 'images' / 'a.png'}: cannot read image (not a recognised image file)" in msg
    assert f"{root / 'masks' / 'c.png'}: cannot read image (file is empty)" in msg
    assert "mask is 5x5 but its image is 10x8" in msg


def test_check_pairs_limits_listed_problems(tmp_path):
    names = [f"s{i}" for i in range(8)]
    root = _dataset(tmp_path, names)
    for n in names:
        _img(root / "masks" / f"{n}.png", h=3, w=3)
    msg = _error(check_pairs, find_pairs(root / "images", root / "masks"))
    assert msg.count("mask is 3x3") == 5 and msg.endswith("; and 3 more problems")


# --- list_inputs -------------------------------------------------------------------------------


def test_list_inputs_files_folders_globs_dedup(tmp_path):
    a = _img(tmp_path / "in" / "a.png")
    b = _img(tmp_path / "in" / "b.tif")
    c = _img(tmp_path / "other" / "c.jpg")
    (tmp_path / "in" / "notes.txt").write_text("x")
    _img(tmp_path / "in" / ".hidden.png")
    out = list_inputs([str(c), str(tmp_path / "in"), str(tmp_path / "*" / "*.png"), str(b)])
    assert out == [c, a, b]


@pytest.mark.parametrize("kind", ["missing", "not_image", "empty_folder", "no_match"])
def test_list_inputs_errors(tmp_path, kind):
    (tmp_path / "empty").mkdir()
    (tmp_path / "t.txt").write_text("x")
    item = {
        "missing": tmp_path / "nope.png",
        "not_image": tmp_path / "t.txt",
        "empty_folder": tmp_path / "empty",
        "no_match": tmp_path / "*.png",
    }[kind]
    assert _error(list_inputs, [str(item)]).startswith(f"{item}: ")


# --- make_split ---------------------------------------------------------------------------------


def test_make_split_deterministic_disjoint_sorted():
    ids = [f"img{i:02d}" for i in range(20)]
    s1 = make_split(list(reversed(ids)), 0.2, seed=3)
    assert s1 == make_split(ids, 0.2, seed=3)
    assert set(s1) == {"train", "val"}
    assert len(s1["val"]) == 4 and len(s1["train"]) == 16
    assert sorted(s1["train"] + s1["val"]) == ids
    assert all(v == sorted(v) for v in s1.values())
    assert make_split(ids, 0.2, seed=4) != s1


def test_make_split_with_test():
    ids = [str(i) for i in range(10)]
    s = make_split(ids, 0.2, seed=0, test_fraction=0.3)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (5, 2, 3)
    assert sorted(s["train"] + s["val"] + s["test"], key=int) == ids


@pytest.mark.parametrize("n", [2, 3, 5])
def test_make_split_small_keeps_one_val_and_one_train(n):
    s = make_split([str(i) for i in range(n)], 0.05, seed=0)
    assert len(s["val"]) == 1 and len(s["train"]) == n - 1
    assert make_split(["only"], 0.2, seed=0) == {"train": ["only"], "val": []}
    assert make_split(["a", "b"], 0.0, seed=0) == {"train": ["a", "b"], "val": []}


@pytest.mark.parametrize("val,test", [(1.0, 0.0), (-0.1, 0.0), (0.6, 0.5)])
def test_make_split_bad_fractions(val, test):
    with pytest.raises(UserError):
        make_split(["a", "b", "c"], val, seed=0, test_fraction=test)


@pytest.mark.parametrize(
    "n,val,test,want",
    [
        (10, 0.2, 0.3, (2, 3)),
        (3, 0.5, 0.4, (1, 1)),
        (2, 0.3, 0.3, (1, 0)),
        (1, 0.2, 0.2, (0, 0)),
        (20, 0.15, 0.0, (3, 0)),
    ],
)
def test_side_counts_shared_by_both_splitters(n, val, test, want):
    from biomedseg.data.group_split import split_with_groups
    from biomedseg.data.splits import side_counts

    assert side_counts(n, val, test) == want
    ids = [f"i{k}" for k in range(n)]
    for split in (make_split(ids, val, seed=0, test_fraction=test), split_with_groups(ids, [], test, val, seed=0)):
        assert (len(split["val"]), len(split.get("test", []))) == want


class _CountingList(list):
    """A list that counts how often it is iterated over."""

    iterations = 0

    def __iter__(self):
        type(self).iterations += 1
        return super().__iter__()


def test_split_lookup_reads_the_ids_once():
    """Defect 9: the ids of a split were looked up in ``set(all_ids)`` rebuilt for every id."""
    from biomedseg.data.splits import _split_ids

    all_ids = _CountingList(f"i{k}" for k in range(500))
    wanted = [f"i{k}" for k in range(0, 600, 2)]
    _CountingList.iterations = 0
    got = _split_ids("val", {"val": wanted}, None, all_ids, True)
    assert got == [f"i{k}" for k in range(0, 500, 2)] and _CountingList.iterations == 1
    _CountingList.iterations = 0
    assert _split_ids("test", {}, {"split": {"test": wanted}}, all_ids, False) == got
    assert _CountingList.iterations == 1
