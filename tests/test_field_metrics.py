"""Field metrics (issue 25): each metric on small cases whose answer is worked out by hand here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biomedseg.core.errors import UserError
from biomedseg.metrics.boundary import BoundaryOptions, boundary_scores, hausdorff
from biomedseg.metrics.choice import choose_metrics, fingerprint, parse_metric_names
from biomedseg.metrics.field import FieldAccumulator, FieldOptions, ImagePair, metric_direction
from biomedseg.metrics.matching import match_objects, one_to_one, pairs_above, relabel
from biomedseg.metrics.objects import (
    aji,
    aji_plus,
    dsb_average_precision,
    object_dice,
    object_f1,
    object_hausdorff,
    object_scores,
    panoptic_quality,
)
from biomedseg.metrics.shape import ellipse_circumference, head_circumference_error
from biomedseg.metrics.thin import cldice, rand_information_scores


def _square(shape=(64, 64), top=10, left=10, side=20) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[top : top + side, left : left + side] = 1
    return m


# ---------------------------------------------------------------- boundary


@pytest.mark.parametrize("k", [1, 3, 6])
def test_two_squares_shifted_by_k_pixels_have_hd95_k(k):
    truth, pred = _square(), _square(left=10 + k)
    s = boundary_scores(pred, truth, [1])[1]
    assert s["hd95"] == pytest.approx(k)
    assert hausdorff(pred == 1, truth == 1) == pytest.approx(k)
    # every surface pixel lies within k of the other surface; the left/right edges lie k away
    assert boundary_scores(pred, truth, [1], options=BoundaryOptions(nsd_tolerance_px=k))[1]["nsd"] == 1.0
    assert boundary_scores(pred, truth, [1], options=BoundaryOptions(nsd_tolerance_px=k - 0.5))[1]["nsd"] < 1.0
    assert 0 < s["assd"] < k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_scores_equal_monai_on_random_shapes(seed):
    """The distances are MONAI's definitions; computed here from shared distance transforms."""
    import warnings

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shapes = [ndimage.gaussian_filter(rng.random((48, 64)), 3) > 0.5 for _ in range(2)]
    pred, truth = (s.astype(np.uint8) for s in shapes)
    ours = boundary_scores(pred, truth, [0, 1], options=BoundaryOptions(nsd_tolerance_px=1.5))
    p = torch.from_numpy(np.stack([pred == 0, pred == 1])[None].astype(np.float32))
    t = torch.from_numpy(np.stack([truth == 0, truth == 1])[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95)[0]
        assd = compute_average_surface_distance(p, t, include_background=True, symmetric=True)[0]
        nsd = compute_surface_dice(p, t, [1.5, 1.5], include_background=True)[0]
    for c in (0, 1):
        assert ours[c]["hd95"] == pytest.approx(float(hd[c]), rel=1e-5)
        assert ours[c]["assd"] == pytest.approx(float(assd[c]), rel=1e-5)
        assert ours[c]["nsd"] == pytest.approx(float(nsd[c]), rel=1e-5)


def test_boundary_in_micrometres_and_the_tolerance_in_um():
    truth, pred = _square(), _square(left=14)
    s = boundary_scores(pred, truth, [1], pixel_size=(0.5, 0.5))[1]
    assert s["hd95_um"] == pytest.approx(2.0) and s["hd95"] == pytest.approx(4.0)
    # 2 µm at 0.5 µm/px = 4 px: everything within tolerance
    assert boundary_scores(pred, truth, [1], (0.5, 0.5), BoundaryOptions(nsd_tolerance_um=2.0))[1]["nsd"] == 1.0
    assert boundary_scores(pred, truth, [1], None, BoundaryOptions(nsd_tolerance_um=2.0))[1]["nsd"] < 1.0


def test_boundary_perfect_and_empty_cases():
    truth = _square()
    assert boundary_scores(truth, truth, [1])[1] == {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    empty = np.zeros_like(truth)
    assert boundary_scores(empty, empty, [1])[1] == {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    diag = math.hypot(64, 64)
    for pred, target in ((empty, truth), (truth, empty)):
        assert boundary_scores(pred, target, [1])[1] == {"hd95": diag, "assd": diag, "nsd": 0.0}


# ---------------------------------------------------------------- matching and objects


def _split_case():
    """One true 10x20 object; the prediction splits it: 10x12 (IoU 0.6) and 10x7 (IoU 0.35)."""
    truth = np.zeros((20, 30), np.int32)
    truth[5:15, 5:25] = 1
    pred = np.zeros_like(truth)
    pred[5:15, 5:17] = 1
    pred[5:15, 18:25] = 2
    return truth, pred


def test_matching_table_and_unique_pairs():
    truth, pred = _split_case()
    m = match_objects(truth, pred)
    assert m.n_true == 1 and m.n_pred == 2
    assert m.intersection.tolist() == [[120, 70]]
    assert m.iou[0].tolist() == pytest.approx([0.6, 70 / 200])
    assert [x.tolist() for x in pairs_above(m, 0.5)] == [[0], [0]]
    assert [x.tolist() for x in one_to_one(m)] == [[0], [0]]
    with pytest.raises(ValueError):
        pairs_above(m, 0.3)
    assert relabel(np.array([[0, 7], [7, 3]])).tolist() == [[0, 2], [2, 1]]


def test_surfaces_and_perimeters_of_all_objects_equal_the_per_object_ones():
    from scipy import ndimage
    from skimage.measure import regionprops

    from biomedseg.metrics.matching import label_surface, perimeters, surface_points
    from biomedseg.metrics.shape import object_table

    rng = np.random.default_rng(4)
    lab = ndimage.label(ndimage.gaussian_filter(rng.random((60, 80)), 2) > 0.52)[0]
    lab[0:5, 0:6] = lab.max() + 1  # one touching the image corner
    ids = np.unique(lab)[1:]
    want = np.zeros(lab.shape, bool)
    for i in ids:
        m = lab == i
        want |= m & ~ndimage.binary_erosion(m)
    assert (label_surface(lab) == want).all()
    props = regionprops(lab)
    assert perimeters(lab, ids) == pytest.approx([r.perimeter for r in props])
    pts, centroids = surface_points(lab, ids)
    assert sum(len(p) for p in pts) == int(want.sum())
    assert centroids == pytest.approx(np.array([r.centroid for r in props]))
    rows = object_table(lab, pixel_size=(0.5, 0.5))
    assert [r["area_px"] for r in rows] == [r.area for r in props]
    assert rows[0]["area_um2"] == pytest.approx(props[0].area * 0.25)


def test_one_object_split_in_two_known_aji_and_pq():
    truth, pred = _split_case()
    m = match_objects(truth, pred)
    # AJI: the true object pairs with the 0.6 part: C = 120, U = 200 + the unpaired 70-pixel part
    assert aji(m) == pytest.approx(120 / 270)
    assert aji_plus(m) == pytest.approx(120 / 270)
    # PQ: one TP (IoU 0.6), one FP, no FN -> SQ 0.6, RQ 1 / (1 + 0.5) = 2/3, PQ 0.4
    assert panoptic_quality(m) == pytest.approx({"pq": 0.4, "sq": 0.6, "rq": 2 / 3})
    assert object_f1(m) == pytest.approx(2 / 3)
    # GlaS object Dice: truth side 2*120/320; prediction side weighted 120/190 and 70/190
    pred_side = (120 * 240 / 320 + 70 * 140 / 270) / 190
    assert object_dice(m) == pytest.approx((240 / 320 + pred_side) / 2)


def test_aji_counts_a_prediction_twice_and_aji_plus_does_not():
    truth = np.zeros((10, 30), np.int32)
    truth[2:8, 2:12], truth[2:8, 14:24] = 1, 2  # two 60-px objects
    pred = np.zeros_like(truth)
    pred[2:8, 2:24] = 1  # one 132-px object covering both
    m = match_objects(truth, pred)
    assert aji(m) == pytest.approx(120 / (132 + 132))  # both true objects pair with the same prediction
    assert aji_plus(m) == pytest.approx(60 / (132 + 60))  # one pair; the other true object is unmatched


def test_data_science_bowl_average_precision_worked_example():
    """Three true nuclei; predictions of IoU 0.9 and 0.7 (strict subsets), one missed, one false.

    Hits at t are pairs with IoU > t: two for t = 0.50..0.65 -> 2 / (2 + 1 + 1) = 0.5; one for
    t = 0.70..0.85 (0.7 is not > 0.7) -> 1 / (1 + 2 + 2) = 0.2; none at 0.90, 0.95 -> 0.
    AP = (4 * 0.5 + 4 * 0.2 + 2 * 0) / 10 = 0.28.
    """
    truth = np.zeros((40, 60), np.int32)
    pred = np.zeros_like(truth)
    truth[2:12, 2:12], pred[2:12, 2:11] = 1, 1  # 90 / 100
    truth[2:12, 20:30], pred[2:12, 20:27] = 2, 2  # 70 / 100
    truth[20:30, 2:12] = 3  # missed
    pred[20:30, 40:50] = 3  # false positive
    assert dsb_average_precision(match_objects(truth, pred)) == pytest.approx(0.28)


def test_object_hausdorff_of_a_shifted_object_and_of_an_unmatched_one():
    truth = np.zeros((40, 60), np.int32)
    truth[5:15, 5:15] = 1
    pred = np.zeros_like(truth)
    pred[5:15, 8:18] = 1
    m = match_objects(truth, pred)
    assert object_hausdorff(m, truth, pred) == pytest.approx(3.0)
    far = np.zeros_like(truth)
    far[5:15, 35:45] = 1  # no overlap: paired with the nearest object, 30 px away
    assert object_hausdorff(match_objects(truth, far), truth, far) == pytest.approx(30.0)


def test_perfect_and_empty_object_scores():
    truth, _ = _split_case()
    perfect = object_scores(truth, truth)
    assert perfect == pytest.approx(
        {
            "object_f1": 1,
            "object_dice": 1,
            "object_hausdorff": 0,
            "aji": 1,
            "aji_plus": 1,
            "pq": 1,
            "sq": 1,
            "rq": 1,
            "ap": 1,
        }
    )
    empty = np.zeros_like(truth)
    assert object_scores(empty, empty) == pytest.approx({**perfect})
    for t, p in ((truth, empty), (empty, truth)):
        s = object_scores(t, p)
        assert s["object_hausdorff"] == pytest.approx(math.hypot(*truth.shape))
        assert all(s[k] == 0.0 for k in s if k != "object_hausdorff")


# ---------------------------------------------------------------- thin structures


def test_rand_and_information_of_a_split_cell_by_hand():
    truth = np.ones((10, 10), np.int32)
    pred = np.ones_like(truth)
    pred[:, 5:] = 2
    s = rand_information_scores(truth, pred)
    # p = [0.5, 0.5]: sum p^2 = 0.5, sum t^2 = 1, sum s^2 = 0.5 -> 0.5 / 0.75
    assert s["rand"] == pytest.approx(2 / 3)
    # H(T) = 0, H(S) = 1 bit, I = 0
    assert s["vi_score"] == pytest.approx(0.0) and s["vi"] == pytest.approx(1.0)
    assert rand_information_scores(truth, truth) == pytest.approx({"rand": 1, "vi_score": 1, "vi": 0})


def test_rand_and_information_agree_with_scikit_image():
    from skimage.metrics import adapted_rand_error, variation_of_information

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, (300, 300))
    pred = rng.integers(0, 5, (300, 300))
    s = rand_information_scores(truth, pred)
    # skimage counts pixel pairs without a pixel's pair with itself; the paper's p_ij^2 includes
    # them: the two agree up to O(1 / segment size)
    assert s["rand"] == pytest.approx(1 - adapted_rand_error(truth, pred, ignore_labels=(0,))[0], rel=1e-3)
    assert s["vi"] == pytest.approx(sum(variation_of_information(truth, pred, ignore_labels=(0,))))


def test_cldice_by_hand():
    truth = np.zeros((20, 40), bool)
    truth[5, 5:35] = True
    assert cldice(truth, truth) == 1.0
    pred = truth.copy()
    pred[15, 5:35] = True  # a second line of the same length, not in the truth: Tprec 1/2, Tsens 1
    assert cldice(pred, truth) == pytest.approx(2 * 0.5 / 1.5)
    assert cldice(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    assert cldice(np.zeros_like(truth), truth) == 0.0


# ---------------------------------------------------------------- shape


def test_circumference_of_a_circle_and_the_hc_error_in_mm():
    from skimage.draw import disk

    assert ellipse_circumference(10, 10) == pytest.approx(2 * math.pi * 10)
    truth = np.zeros((200, 200), bool)
    truth[disk((100, 100), 60)] = True
    pred = np.zeros_like(truth)
    pred[disk((100, 100), 70)] = True
    s = head_circumference_error(pred, truth, pixel_size=(100.0, 100.0))  # 0.1 mm pixels
    assert s["hc_true_px"] == pytest.approx(2 * math.pi * 60, rel=0.01)
    assert s["hc_error_px"] == pytest.approx(2 * math.pi * 10, abs=1.0)
    assert s["hc_error_mm"] == pytest.approx(s["hc_error_px"] * 0.1)
    assert head_circumference_error(truth, truth)["hc_error_px"] == 0.0
    empty = head_circumference_error(np.zeros_like(truth), truth)
    assert empty["hc_error_px"] == pytest.approx(empty["hc_true_px"]) and empty["hc_error_rel"] == 1.0


# ---------------------------------------------------------------- choice and the accumulator


def test_metric_names_and_groups():
    assert parse_metric_names("aji,hd95") == ("pixel", "boundary", "instance")
    assert parse_metric_names(["all"]) == ("pixel", "boundary", "object", "instance", "thin", "shape")
    with pytest.raises(UserError, match="--metrics: unknown metric 'nosuch'"):
        parse_metric_names("nosuch")
    assert metric_direction("hd95") == "lower" and metric_direction("vi_score") == "higher"
    assert metric_direction("aji_nucleus") == "higher" and metric_direction("hd95_um") == "lower"


def _disks(n, r, size=128, seed=0):
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    m = np.zeros((size, size), np.uint8)
    for _ in range(n):
        m[disk(tuple(rng.integers(r, size - r, 2)), r, shape=m.shape)] = 1
    return m


def test_choice_follows_flags_then_dataset_json_then_the_fingerprint():
    many = [_disks(12, 4, seed=s) for s in range(3)]
    assert choose_metrics("pq", {"metrics": ["shape"]}, many).groups == ("pixel", "instance")
    c = choose_metrics(None, {"metrics": ["object", "aji"]}, many)
    assert c.groups == ("pixel", "object", "instance") and c.source == "dataset.json"
    c = choose_metrics(None, {}, many)
    assert c.groups == ("pixel", "boundary", "object", "instance") and "many small objects" in c.reason
    one = [_disks(1, 40, seed=s) for s in range(3)]
    assert choose_metrics(None, {}, one).groups == ("pixel", "boundary", "shape")
    lines = np.zeros((128, 128), np.uint8)
    lines[::16, :] = 1
    lines[:, ::16] = 1
    assert choose_metrics(None, {}, [lines]).groups == ("pixel", "boundary", "thin")  # vessels
    assert "membrane" in choose_metrics(None, {}, [1 - lines]).reason  # cells between thin membranes
    assert fingerprint([one[0]])["objects_per_image"] == 1


def test_accumulator_rows_per_object_table_and_valid_region():
    truth, pred = _split_case()
    acc = FieldAccumulator(["background", "nucleus"], 0, FieldOptions(parse_metric_names("all")))
    row = acc.update(ImagePair("a", (pred > 0).astype(np.uint8), (truth > 0).astype(np.uint8)))
    # the two predicted parts are separate 8-connected components: the split case again
    assert row["aji"] == pytest.approx(120 / 270) and row["pq"] == pytest.approx(0.4)
    objs = acc.object_rows()
    assert [(o["source"], o["area_px"]) for o in objs] == [("truth", 200), ("prediction", 120), ("prediction", 70)]
    assert objs[0]["best_iou"] == pytest.approx(0.6)
    valid = np.zeros(truth.shape, bool)
    valid[:, :17] = True  # the 70-pixel part is outside the valid region: the pair alone remains
    row = acc.update(ImagePair("b", (pred > 0).astype(np.uint8), (truth > 0).astype(np.uint8), valid=valid))
    assert row["aji"] == pytest.approx(1.0)
    assert acc.summary()["aji"] == pytest.approx((120 / 270 + 1) / 2)


def test_true_instance_ids_define_the_true_objects():
    truth, pred = _split_case()
    semantic = (truth > 0).astype(np.uint8)
    inst = truth * 0
    inst[5:15, 5:17], inst[5:15, 17:25] = 4, 9  # two true nuclei touching: one component, two ids
    acc = FieldAccumulator(["background", "nucleus"], 0, FieldOptions(("pixel", "instance")))
    row = acc.update(ImagePair("a", (pred > 0).astype(np.uint8), semantic, true_instances=inst))
    # 120/120 pair and 70/80 pair: AJI = (120 + 70) / (120 + 80)
    assert row["aji"] == pytest.approx(190 / 200) and row["rq"] == 1.0


# ---------------------------------------------------------------- evaluate, the command line, instance masks


def _run_cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "biomedseg.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def _one_line_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _with_instances(data, tmp_path):
    """A copy of ``data`` with ``instances/<id>.png``: the 8-connected components of each mask."""
    import shutil

    from PIL import Image
    from scipy import ndimage

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "instances").mkdir()
    for m in sorted((copy / "masks").glob("*.png")):
        mask = np.asarray(Image.open(m))
        mask = mask if mask.ndim == 2 else mask[..., 0]
        lab = ndimage.label(mask > 0, structure=np.ones((3, 3)))[0].astype(np.uint16)
        Image.fromarray(lab).save(copy / "instances" / m.name)
    return copy


def test_evaluate_writes_field_columns_per_object_table_and_the_reason(trained_run, synthetic_data, tmp_path):
    import csv
    import json

    from biomedseg.workflows.evaluation import evaluate

    m = evaluate(trained_run, synthetic_data, tmp_path / "ev", metrics="all", quiet=True, device="cpu")
    assert m["field"]["groups"] == ["pixel", "boundary", "object", "instance", "thin", "shape"]
    assert m["field"]["source"] == "--metrics" and "boundary" in m["field"]["conventions"]
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_image.csv")))
    for key in ("image_dice", "hd95", "nsd", "object_f1", "aji", "pq", "ap", "rand", "cldice", "hc_error_px"):
        assert key in rows[0], key
    assert 0.0 <= m["aji"] <= 1.0 and m["hd95"] >= 0.0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["field"]["reason"] == "chosen with --metrics"
    objects = list(csv.DictReader(open(tmp_path / "ev" / "per_object.csv")))
    assert {o["source"] for o in objects} == {"truth", "prediction"} and int(objects[0]["area_px"]) > 0
    assert "Field metrics" in (tmp_path / "ev" / "report.html").read_text()
    # the default: the fingerprint chooses, and says why
    m = evaluate(trained_run, synthetic_data, tmp_path / "ev2", quiet=True, device="cpu", overlays=False)
    assert m["field"]["source"] == "fingerprint" and m["field"]["reason"]


def test_truth_instances_missing_or_mismatching(trained_run, synthetic_data, tmp_path, caplog):
    from biomedseg.workflows.evaluation import evaluate

    data = _with_instances(synthetic_data, tmp_path)
    m = evaluate(trained_run, data, tmp_path / "ok", metrics="instance", quiet=True, device="cpu", overlays=False)
    assert np.isfinite(m["aji"])
    ids = [r.split(",")[0] for r in (tmp_path / "ok" / "per_image.csv").read_text().splitlines()[1:]]
    (data / "instances" / f"{ids[0]}.png").unlink()
    m = evaluate(trained_run, data, tmp_path / "one", metrics="instance", quiet=True, device="cpu", overlays=False)
    assert f"{ids[0]}.png: instance mask missing" in caplog.text
    rows = (tmp_path / "one" / "per_image.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(",")))
    assert first["aji"] in ("", "nan") and np.isfinite(m["aji"])  # the other images still scored
    from PIL import Image

    for i in ids[1:]:  # every remaining file: an object id on the background
        p = data / "instances" / f"{i}.png"
        a = np.asarray(Image.open(p)).copy()
        a[0, 0] = 7 if a[0, 0] == 0 else a[0, 0]
        Image.fromarray(a).save(p)
    mask0 = np.asarray(Image.open(data / "masks" / f"{ids[1]}.png"))
    assert (mask0 if mask0.ndim == 2 else mask0[..., 0])[0, 0] == 0  # the edited pixel is background there
    r = _run_cli(
        "evaluate",
        trained_run,
        data,
        "--out",
        tmp_path / "bad",
        "--metrics",
        "aji",
        "--device",
        "cpu",
        "--no-overlays",
        "-q",
    )
    # nothing can be computed: one warning naming each file, then one error line, exit 2
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == len(ids) + 1
    assert all(f"{i}.png: instance ids do not match the semantic mask" in r.stderr for i in ids[1:])
    assert "no usable instance mask" in lines[-1]


def test_evaluate_metrics_nosuch_is_one_line(tmp_path):
    r = _run_cli("evaluate", tmp_path / "norun", "--out", tmp_path / "o", "--metrics", "nosuch")
    _one_line_error(r, "--metrics: unknown metric 'nosuch'")


# ---------------------------------------------------------------- compare --metric, sweep --objective


def test_compare_pair_takes_lower_is_better_metrics_the_other_way_round():
    from types import SimpleNamespace

    from biomedseg.workflows.comparison import _compare_pair, metric_group

    a = SimpleNamespace(name="a", scores={"x": 5.0, "y": 6.0, "z": 7.0})
    b = SimpleNamespace(name="b", scores={"x": 3.0, "y": 4.0, "z": 5.0})  # 2 px closer on every image
    c = _compare_pair(a, b, ["x", "y", "z"], "hd95", 500, 0, 0.95)
    assert c["direction"] == "lower" and c["mean_difference"] == pytest.approx(2.0)
    assert c["sentence"].startswith("b is better than a by 2.000 hd95 (lower is better)")
    c = _compare_pair(a, b, ["x", "y", "z"], "aji", 500, 0, 0.95)
    assert c["direction"] == "higher" and c["sentence"].startswith("a is better than b by 2.000 aji")
    assert metric_group("aji_plus") == "instance" and metric_group("hd95_um") == "boundary"
    with pytest.raises(UserError, match="--metric nosuch: not a per-image metric"):
        metric_group("nosuch")


def test_compare_metric_evaluates_with_that_metric(trained_run, synthetic_data, tmp_path):
    import json
    import shutil

    from biomedseg.workflows.comparison import compare

    twin = tmp_path / "twin"
    shutil.copytree(trained_run, twin)
    s = compare(
        [trained_run, twin],
        tmp_path / "cmp",
        data=synthetic_data,
        metric="hd95",
        n_resamples=200,
        device="cpu",
        quiet=True,
    )
    (c,) = s["comparisons"]
    assert s["score"] == "hd95" and c["direction"] == "lower" and c["mean_difference"] == 0.0
    assert "no difference" in c["sentence"] and "hd95" in c["sentence"]
    m = json.loads((tmp_path / "cmp" / "evals" / "run" / "metrics.json").read_text())
    assert m["field"]["groups"] == ["pixel", "boundary"]
    assert "Per-image hd95" in (tmp_path / "cmp" / "compare.md").read_text()
    r = _run_cli("compare", trained_run, twin, "--out", tmp_path / "c2", "--metric", "nosuch")
    _one_line_error(r, "--metric nosuch: not a per-image metric")


@pytest.mark.slow
def test_sweep_objective_ranks_trials_by_the_validation_metric(synthetic_data, tmp_path):
    pytest.importorskip("optuna")
    from biomedseg.sweeps import run as sweeps
    from conftest import TINY

    out = tmp_path / "sweep"
    s = sweeps.sweep(
        synthetic_data,
        out,
        ["lr=1e-3,1e-2"],
        prune=False,
        objective="hd95",
        **{**TINY, "epochs": 1, "seed": 0, "quiet": True, "num_threads": 1},
    )
    rows = s["rows"]
    assert len(rows) == 2 and all(r["val_hd95"] is not None for r in rows)
    assert rows[0]["val_hd95"] <= rows[1]["val_hd95"]  # lower is better: the best first
    assert s["best"] == rows[0]["trial"]
    assert (out / "evals" / f"{rows[0]['run']}_val" / "per_image.csv").is_file()
    assert "ranked by val_hd95 (lower is better)" in (out / "table.md").read_text()
    with pytest.raises(UserError, match="ranks trials by hd95, not val_dice"):
        sweeps.sweep(
            synthetic_data,
            out,
            ["lr=1e-3,1e-2"],
            prune=False,
            **{**TINY, "epochs": 1, "seed": 0, "quiet": True, "num_threads": 1},
        )


def test_predicted_instances_from_a_watershed_split_touching_objects():
    truth, _ = _split_case()  # the true object: ids 4 and 9 side by side in the instance mask below
    semantic = (truth > 0).astype(np.uint8)
    inst = np.zeros_like(truth)
    inst[5:15, 5:15], inst[5:15, 15:25] = 4, 9
    watershed = np.zeros_like(truth)
    watershed[5:15, 5:15], watershed[5:15, 15:25] = 1, 2  # the same cut, as a watershed step would give
    acc = FieldAccumulator(["background", "nucleus"], 0, FieldOptions(("pixel", "instance")))
    row = acc.update(ImagePair("a", semantic, semantic, true_instances=inst, pred_instances={1: watershed}))
    assert row["pq"] == 1.0 and row["aji"] == 1.0
    row = acc.update(ImagePair("b", semantic, semantic, true_instances=inst))  # connected components: one object
    # both true nuclei pair with the one 200-px object (IoU 0.5, not > 0.5: no PQ match);
    # AJI counts it twice: (100 + 100) / (200 + 200); AJI+ once: 100 / (200 + 100)
    assert row["rq"] == pytest.approx(0.0) and row["aji"] == pytest.approx(0.5)
    assert row["aji_plus"] == pytest.approx(1 / 3)


def test_a_bad_name_in_dataset_json_metrics_names_the_file(tmp_path):
    from types import SimpleNamespace

    from biomedseg.workflows.field_metrics import choose_for_split

    source = SimpleNamespace(meta={"metrics": ["object", "nosuch"]}, root=tmp_path)
    with pytest.raises(UserError, match=r"dataset.json: \"metrics\": unknown metric 'nosuch'"):
        choose_for_split(None, source, [], None, False, 0)
    source.meta = {"metrics": "aji"}
    assert choose_for_split(None, source, [], None, False, 0).groups == ("pixel", "instance")
    assert choose_for_split("hd95", source, [], None, False, 0).source == "--metrics"
