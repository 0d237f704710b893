"""Ensembles: probabilities are the weighted mean of the members' (in memory and streamed), the
ensemble folder is a run wherever a run is accepted, members must agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from biomedseg.core.errors import UserError
from biomedseg.inference.predict.core import predict_proba_image
from biomedseg.inference.run import load_run
from biomedseg.runs import open_run
from biomedseg.runs.ensemble import ensemble_members, parse_weights, write_ensemble
from biomedseg.stream.predictor import StreamingPredictor
from conftest import write_fake_run

KW = {"depth": 3, "base_channels": 8, "num_res_units": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_member(run_dir, seed: int, normalization: dict, n_classes: int = 3, patch: int = 64, data=None, val_ids=()):
    """A run of a random-weight U-Net with its own input normalisation."""
    from biomedseg.models import create_model

    torch.manual_seed(seed)
    model = create_model("unet", 1, n_classes, **KW)
    write_fake_run(
        run_dir,
        "unet",
        model.state_dict(),
        data,
        list(val_ids),
        patch_size=patch,
        batch_size=4,
        model_kwargs=KW,
        n_classes=n_classes,
        overlap=0.25,
    )
    path = run_dir / "dataset.json"
    info = json.loads(path.read_text())
    info["normalization"] = normalization
    path.write_text(json.dumps(info))
    return run_dir


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [
        make_member(root / "a", 0, {"mean": [100.0], "std": [50.0]}),
        make_member(root / "b", 1, {"mean": [90.0], "std": [40.0], "clip": {"low": [10.0], "high": [220.0]}}),
        make_member(root / "c", 2, {"mean": [120.0], "std": [60.0]}),
    ]


def _image(shape=(150, 170), seed=3):
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 1)).astype(np.uint8)


def _weighted_mean(probas, weights):
    w = np.asarray(weights, np.float64) / sum(weights)
    return sum(wi * p.astype(np.float64) for wi, p in zip(w, probas))


@pytest.mark.parametrize("tta", ["none", "flips"])
def test_ensemble_probabilities_are_the_weighted_mean_of_the_members_in_memory(members, tmp_path, tta):
    weights = [1.0, 1.0, 2.0]
    ens = write_ensemble(tmp_path / "ens", members, weights)
    image = _image()
    probas = []
    for m in members:
        loaded = load_run(m, device="cpu")
        probas.append(predict_proba_image(loaded, loaded.predictor(tta=tta), image))
    loaded = load_run(ens.root, device="cpu")
    got = predict_proba_image(loaded, loaded.predictor(tta=tta), image)
    ref = _weighted_mean(probas, weights)
    assert got.shape == (3, 150, 170)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.abs(probas[0] - probas[2]).max() > 1e-2  # the members differ: the mean is not trivial


def test_ensemble_probabilities_are_the_weighted_mean_of_the_members_streamed(members, tmp_path):
    weights = [2.0, 1.0, 1.0]
    ens = write_ensemble(tmp_path / "ens", members, weights)
    image = _image((130, 200), seed=5)
    probas = [StreamingPredictor.from_run(load_run(m, device="cpu"), tta="flips").predict_proba(image) for m in members]
    got = StreamingPredictor.from_run(load_run(ens.root, device="cpu"), tta="flips").predict_proba(image)
    assert got.shape == (3, 130, 200)
    np.testing.assert_allclose(got, _weighted_mean(probas, weights), atol=1e-6)


def test_a_cv_or_ensemble_member_counts_with_its_own_members(members, tmp_path):
    inner = write_ensemble(tmp_path / "inner", members[:2])
    outer = write_ensemble(tmp_path / "outer", [inner.root, members[2]], [1.0, 2.0])
    leaves = ensemble_members(open_run(outer.root))
    assert [w for _, w in leaves] == pytest.approx([1 / 6, 1 / 6, 2 / 3])
    assert [leaf.root.resolve() for leaf, _ in leaves] == [m.resolve() for m in members]


def test_members_that_disagree_on_classes_or_channels_are_refused(members, tmp_path):
    other = make_member(tmp_path / "two", 4, {"mean": [100.0], "std": [50.0]}, n_classes=2)
    with pytest.raises(UserError, match="classes .* differ"):
        write_ensemble(tmp_path / "ens", [members[0], other])
    ens = write_ensemble(tmp_path / "ok", members[:2])
    info = json.loads((members[1] / "dataset.json").read_text())
    info["channels"] = 3
    (members[1] / "dataset.json").write_text(json.dumps(info))
    try:
        with pytest.raises(UserError, match="input channels"):
            load_run(ens.root, device="cpu")  # a member changed after the ensemble was written
    finally:
        info["channels"] = 1
        (members[1] / "dataset.json").write_text(json.dumps(info))


def test_ensemble_folder_references_relative_paths_or_copies(members, tmp_path):
    ens = write_ensemble(tmp_path / "ens", members[:2], [1.0, 3.0])
    info = json.loads((ens.root / "run.json").read_text())
    assert info["kind"] == "ensemble" and not info["copied"]
    assert [m["weight"] for m in info["members"]] == [1.0, 3.0]
    assert not any(m["path"].startswith("/") for m in info["members"])
    copied = write_ensemble(tmp_path / "copy", members[:2], [1.0, 3.0], copy=True)
    rows = json.loads((copied.root / "run.json").read_text())["members"]
    assert [m["path"] for m in rows] == ["members/a", "members/b"] and rows[1]["weight"] == 0.75
    image = _image((70, 90))
    a, b = (load_run(p, device="cpu") for p in (ens.root, copied.root))
    np.testing.assert_allclose(
        predict_proba_image(a, a.predictor(), image), predict_proba_image(b, b.predictor(), image), atol=1e-6
    )
    with pytest.raises(UserError, match="not empty"):
        write_ensemble(tmp_path / "ens", members[:2])


def test_members_with_different_tiles_predict_on_the_largest(members, tmp_path):
    big = make_member(tmp_path / "big", 7, {"mean": [100.0], "std": [50.0]}, patch=96)
    loaded = load_run(write_ensemble(tmp_path / "ens", [members[0], big]).root, device="cpu")
    assert loaded.settings.patch_size == 96
    assert predict_proba_image(loaded, loaded.predictor(), _image((100, 100))).shape == (3, 100, 100)


def test_parse_weights():
    assert parse_weights(None, 3) == [1.0, 1.0, 1.0] and parse_weights("1,1,2", 3) == [1.0, 1.0, 2.0]
    for bad in ("1,2", "a,b,c", "0,0,0", "-1,1,1"):
        with pytest.raises(UserError):
            parse_weights(bad, 3)


def test_tune_postprocess_and_evaluate_accept_an_ensemble(synthetic_data, tmp_path):
    from biomedseg.workflows.evaluation import evaluate
    from biomedseg.workflows.tune_postprocess import tune_postprocess

    val = json.loads((synthetic_data / "dataset.json").read_text())["split"]["train"][:3]
    runs = [
        make_member(tmp_path / name, seed, {"mean": [100.0], "std": [50.0]}, data=synthetic_data, val_ids=val)
        for name, seed in (("a", 0), ("b", 1))
    ]
    ens = write_ensemble(tmp_path / "ens", runs)
    cfg = tune_postprocess(ens.root, split="val", device="cpu", gate=False)
    assert cfg.tuning["n_images"] == 3 and ens.paths.postprocess.is_file()
    m = evaluate(ens.root, out=tmp_path / "eval", split="test", overlays=False, device="cpu", quiet=True)
    assert m["run"] == str(ens.root) and m["n_images"] == 4
