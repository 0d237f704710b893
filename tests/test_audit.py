"""Data audit: planted problems are all reported, distinct images give no duplicate group."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from biomedseg.audit.run import format_audit_summary, run_audit
from biomedseg.core.errors import UserError
from biomedseg.data.inventory import numbered_mask_base, scan_data
from biomedseg.reports.audit.page import audit_with_report

H, W, PAD = 120, 160, 8


def _canvas(rng, shared_layout: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A distinct grey picture (multi-scale texture + a few discs) on a padded canvas, and its
    index mask (discs = 1)."""
    h, w = H + 2 * PAD, W + 2 * PAD
    img = np.zeros((h, w), np.float32)
    for cells, weight in ((4, 0.5), (12, 0.3), (40, 0.2)):
        small = rng.random((max(2, cells * h // w), cells)).astype(np.float32)
        img += weight * np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    pil = Image.fromarray(np.clip(img * 180 + 30, 0, 255).astype(np.uint8))
    mask = Image.new("L", (w, h), 0)
    if shared_layout:  # every image: a bright disc on black (fundus-like), content inside
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * h) ** 2
        arr = np.where(disc, np.asarray(pil) * 0.3 + 150, 0).astype(np.uint8)
        pil = Image.fromarray(arr)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy, r = rng.uniform(30, w - 30), rng.uniform(30, h - 30), rng.uniform(8, 18)
        ImageDraw.Draw(pil).ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(0, 256)))
        ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    return np.asarray(pil), np.asarray(mask)


def _crop(a: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
    return np.ascontiguousarray(a[PAD + dy : PAD + dy + H, PAD + dx : PAD + dx + W])


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _jpeg_roundtrip(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("L"))


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> Path:
    """Index masks (0/1) with every kind of planted problem."""
    root = tmp_path_factory.mktemp("dirty") / "data"
    rng = np.random.default_rng(3)
    canv = {}
    for k in range(24):
        img, mask = _canvas(rng)
        canv[k] = (img, mask)
        sid = f"c{k:02d}"
        _png(root / "images" / f"{sid}.png", _crop(img))
        m = _crop(mask)
        if k >= 20:
            m = np.zeros_like(m)  # empty masks
        _png(root / "masks" / f"{sid}.png", m)
    # exact duplicate (same mask), noisy copy with an emptied mask, shifted copy with a moved
    # mask, JPEG copy with the same mask
    _png(root / "images" / "x_exact.png", _crop(canv[1][0]))
    _png(root / "masks" / "x_exact.png", _crop(canv[1][1]))
    noisy = np.clip(_crop(canv[2][0]) + rng.normal(0, 4, (H, W)), 0, 255).astype(np.uint8)
    _png(root / "images" / "x_noise.png", noisy)
    _png(root / "masks" / "x_noise.png", np.zeros((H, W), np.uint8))
    _png(root / "images" / "x_shift.png", _crop(canv[3][0], 3, -4))
    _png(root / "masks" / "x_shift.png", np.roll(_crop(canv[3][1], 3, -4), (40, 60), axis=(0, 1)))
    _png(root / "images" / "x_jpeg.png", _jpeg_roundtrip(_crop(canv[4][0]), 60))
    _png(root / "masks" / "x_jpeg.png", _crop(canv[4][1]))
    # mask encodings: 0/255, a 0/255 JPEG (damaged), an RGB palette mask
    _png(root / "masks" / "c05.png", _crop(canv[5][1]) * 255)
    (root / "masks" / "c06.png").unlink()
    Image.fromarray(_crop(canv[6][1]) * 255).save(root / "masks" / "c06.jpg", quality=75)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[_crop(canv[7][1]) > 0] = (255, 0, 0)
    _png(root / "masks" / "c07.png", rgb)
    # a second mask for one image, a size mismatch, an unreadable image, unpaired files
    _png(root / "masks" / "c08_mask_1.png", _crop(canv[9][1]))
    _png(root / "masks" / "c09.png", _crop(canv[9][1])[:, :150])
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    _png(root / "masks" / "broken.png", np.zeros((H, W), np.uint8))
    img, _ = _canvas(rng)
    _png(root / "images" / "lonely.png", _crop(img))
    _png(root / "masks" / "orph<an>&.png", np.zeros((H, W), np.uint8))
    img, mask = _canvas(rng)
    _png(root / "images" / "we<ird>&name.png", _crop(img))
    _png(root / "masks" / "we<ird>&name.png", _crop(mask))
    ids = [f"c{k:02d}" for k in range(24)]
    meta = {
        "name": "dirty",
        "classes": ["background", "lesion"],
        "notes": ["kept"],
        "split": {"train": [i for i in ids if i != "c02"] + ["x_shift"], "test": ["c02", "x_exact", "x_noise"]},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def dirty_audit(dirty, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit_out")
    return audit_with_report(dirty, out=out, progress=False), out


def _codes(audit) -> dict:
    return {f["code"]: f for f in audit["findings"]}


def test_every_planted_problem_is_reported(dirty_audit):
    audit, _ = dirty_audit
    f = _codes(audit)
    for code in (
        "unreadable",
        "unpaired_images",
        "unpaired_masks",
        "multiple_masks",
        "size_mismatch",
        "mask_values",
        "duplicate_conflicts",
        "leakage",
        "duplicates",
        "empty_masks",
    ):
        assert code in f, f"{code} not reported: {sorted(f)}"
    assert any("broken.png" in i for i in f["unreadable"]["items"])
    assert f["unpaired_images"]["items"] == ["images/lonely.png"]
    assert f["unpaired_masks"]["items"] == ["masks/orph<an>&.png"]
    assert f["multiple_masks"]["items"] == ["c08"]
    assert f["size_mismatch"]["items"] == ["c09"]
    # 0/255 mask, JPEG-damaged 0/255 mask and RGB mask among index masks
    assert set(f["mask_values"]["items"]) == {"c05", "c06", "c07"}
    outliers = {r["id"]: r for r in audit["masks"]["mask_outliers"]}
    assert outliers["c05"]["encoding"] == "binary_0_255" and outliers["c07"]["encoding"] == "rgb"
    assert outliers["c06"]["pixels"] > 0  # off-palette (JPEG) pixels counted
    assert {"c20", "c21", "c22", "c23", "x_noise"} <= set(audit["masks"]["empty_mask_ids"])
    assert audit["masks"]["encoding"] == "index"
    # errors come before warnings and infos
    sev = [x["severity"] for x in audit["findings"]]
    assert sev == sorted(sev, key=["error", "warning", "info"].index)


def test_duplicate_groups_and_conflicts(dirty_audit):
    audit, _ = dirty_audit
    groups = {frozenset(g["members"]): g for g in audit["duplicates"]["groups"]}
    expected = {
        frozenset({"c01", "x_exact"}),
        frozenset({"c02", "x_noise"}),
        frozenset({"c03", "x_shift"}),
        frozenset({"c04", "x_jpeg"}),
    }
    assert set(groups) == expected, "no false duplicate group among the distinct images"
    assert groups[frozenset({"c01", "x_exact"})]["exact"]
    assert not groups[frozenset({"c01", "x_exact"})]["conflict"]
    assert groups[frozenset({"c02", "x_noise"})]["conflict"]
    assert groups[frozenset({"c03", "x_shift"})]["conflict"]
    jpeg = groups[frozenset({"c04", "x_jpeg"})]
    assert not jpeg["conflict"] and jpeg["min_dice"] > 0.95
    shift = groups[frozenset({"c03", "x_shift"})]["pairs"][0]
    assert sorted(abs(v) for v in shift["shift_px"]) == [3, 4]
    assert set(audit["duplicates"]["conflict_ids"]) == {"c02", "x_noise", "c03", "x_shift"}
    leaks = [g for g in audit["duplicates"]["groups"] if g["leak"]]
    assert {frozenset(g["members"]) for g in leaks} == {frozenset({"c01", "x_exact"})}


def test_statistics_and_fingerprint(dirty_audit):
    audit, _ = dirty_audit
    masks, inv, it = audit["masks"], audit["inventory"], audit["intensity"]
    assert masks["classes"] == ["background", "lesion"]
    assert abs(sum(masks["class_pixel_fraction"].values()) - 1) < 1e-6
    assert 0 < masks["class_pixel_fraction"]["lesion"] < 0.2
    assert masks["objects"]["lesion"]["count"] >= 20
    assert masks["recommended_min_object_area"]["lesion"] >= 1
    assert len(masks["class_weights"]["median"]) == 2
    assert inv["sizes"][0] == {"width": W, "height": H, "count": inv["n_readable_images"]}
    assert it["channels"] == 1 and 0 < it["mean"][0] < 255 and it["std"][0] > 0
    assert set(it["percentiles"]) == {"0.5", "50", "99.5"}
    fp = audit["fingerprint"]
    for key in ("image_sizes", "channels", "intensity", "class_pixel_fraction", "object_area", "class_weights"):
        assert key in fp


def test_files_written_and_escaped(dirty_audit):
    audit, out = dirty_audit
    data = json.loads((out / "audit.json").read_text())
    assert data["duplicates"]["n_groups"] == 4
    page = (out / "audit.html").read_text()
    assert "orph&lt;an&gt;&amp;.png" in page and "orph<an>" not in page
    assert "http://" not in page and "https://" not in page  # opens offline
    pics = list((out / "audit_files").glob("pair_*.png"))
    assert len(pics) == 4
    assert 'src="audit_files/pair_0001.png"' in page
    text = format_audit_summary(audit)
    lines = text.splitlines()
    first_problem = next(i for i, line in enumerate(lines) if line.strip().startswith(("ERROR", "WARNING")))
    assert lines[first_problem].strip().startswith("ERROR")


def test_distinct_images_with_a_shared_layout_are_not_duplicates(tmp_path):
    rng = np.random.default_rng(11)
    for k in range(30):
        img, mask = _canvas(rng, shared_layout=True)
        _png(tmp_path / "images" / f"f{k:02d}.png", _crop(img))
        _png(tmp_path / "masks" / f"f{k:02d}.png", _crop(mask))
    # one real copy (light noise) must still be found
    img = np.asarray(Image.open(tmp_path / "images" / "f05.png"), np.float32)
    _png(tmp_path / "images" / "f05_copy.png", np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8))
    _png(tmp_path / "masks" / "f05_copy.png", np.asarray(Image.open(tmp_path / "masks" / "f05.png")))
    audit = run_audit(tmp_path, out=None, progress=False)
    groups = [sorted(g["members"]) for g in audit["duplicates"]["groups"]]
    assert groups == [["f05", "f05_copy"]]
    assert audit["duplicates"]["threshold"] >= 0.92


def test_flipped_copies_need_check_flips(tmp_path):
    rng = np.random.default_rng(5)
    for k in range(12):
        img, mask = _canvas(rng)
        _png(tmp_path / "images" / f"g{k:02d}.png", _crop(img))
        _png(tmp_path / "masks" / f"g{k:02d}.png", _crop(mask))
    img = np.asarray(Image.open(tmp_path / "images" / "g03.png"))
    mask = np.asarray(Image.open(tmp_path / "masks" / "g03.png"))
    _png(tmp_path / "images" / "g03_flip.png", np.ascontiguousarray(img[:, ::-1]))
    _png(tmp_path / "masks" / "g03_flip.png", np.ascontiguousarray(mask[:, ::-1]))
    plain = run_audit(tmp_path, progress=False)
    assert plain["duplicates"]["n_groups"] == 0
    flips = run_audit(tmp_path, check_flips=True, progress=False)
    (g,) = flips["duplicates"]["groups"]
    assert sorted(g["members"]) == ["g03", "g03_flip"]
    assert g["pairs"][0]["flip"] == "h" and g["pairs"][0]["dice"] > 0.99 and not g["conflict"]


def test_jpeg_damage_in_binary_masks(tmp_path):
    rng = np.random.default_rng(8)
    for k in range(10):
        img, mask = _canvas(rng)
        _png(tmp_path / "images" / f"b{k}.png", _crop(img))
        if k == 4:
            Image.fromarray(_crop(mask) * 255).save(tmp_path / "masks" / f"b{k}.jpg", quality=70)
        else:
            _png(tmp_path / "masks" / f"b{k}.png", _crop(mask) * 255)
    audit = run_audit(tmp_path, progress=False)
    f = _codes(audit)
    assert audit["masks"]["encoding"] == "binary_0_255"
    assert audit["masks"]["palette"] == [[0], [255]]
    assert f["damaged_masks"]["items"] == ["b4"]
    assert audit["masks"]["damaged_masks"][0]["pixels"] > 0
    assert "mask_values" not in f


def test_rgb_palette_masks(tmp_path):
    rng = np.random.default_rng(9)
    colours = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    total = np.zeros(3)
    for k in range(8):
        img, _ = _canvas(rng)
        idx = np.zeros((H, W), np.uint8)
        idx[10:40, 10:60] = 1
        idx[70:100, 20 + 5 * k : 90 + 5 * k] = 2
        total += np.bincount(idx.ravel(), minlength=3)
        _png(tmp_path / "images" / f"r{k}.png", _crop(img))
        _png(tmp_path / "masks" / f"r{k}_mask.png", np.array(colours, np.uint8)[idx])
    audit = run_audit(tmp_path, progress=False)
    m = audit["masks"]
    assert m["encoding"] == "rgb" and m["palette"][0] == [0, 0, 0] and len(m["palette"]) == 3
    shares = sorted(m["class_pixel_fraction"].values())
    assert np.allclose(shares, sorted(total / total.sum()), atol=1e-6)


def test_images_only_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(3):
        _png(tmp_path / "only" / f"i{k}.png", _crop(_canvas(rng)[0]))
    audit = run_audit(tmp_path / "only", progress=False)
    assert "no_masks" in _codes(audit) and audit["inventory"]["n_image_ids"] == 3
    with pytest.raises(UserError, match="folder not found"):
        run_audit(tmp_path / "missing", progress=False)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found"):
        run_audit(tmp_path / "empty", progress=False)


def test_tolerant_pairing_conventions(tmp_path):
    for name in ("a.png", "a_mask.png", "a_mask_1.png", "a_mask (2).png", "b.tif", "b_mask.tif", "c.png"):
        _png(tmp_path / name, np.zeros((4, 4), np.uint8))
    scan = scan_data(tmp_path)
    items = {it.id: it for it in scan.items}
    assert set(items) == {"a", "b", "c"}
    assert items["a"].mask.name == "a_mask.png"
    assert sorted(p.name for p in items["a"].extra_masks) == ["a_mask (2).png", "a_mask_1.png"]
    assert items["c"].mask is None and [it.id for it in scan.unpaired_images] == ["c"]
    assert numbered_mask_base("x_mask_3") == "x" and numbered_mask_base("benign (3)") is None
