"""Cross-validation: folds keep duplicate groups together and never touch the test split; an
interrupted CV resumes without retraining finished folds; out-of-fold predictions feed the
summary and tune-postprocess; the CV folder predicts as the ensemble of its folds."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import numpy as np
import pytest

from biomedseg.core.errors import UserError
from biomedseg.data.folds import fold_splits, make_folds
from biomedseg.runs.cv import open_cv
from biomedseg.workflows.crossval import cross_validate, format_summary
from conftest import TINY

FOLD_TRAINING = {**TINY, "epochs": 1, "iterations_per_epoch": 2, "device": "cpu", "num_threads": 1}


# ------------------------------------------------------------------------------ make_folds (pure)
@pytest.mark.parametrize("seed", range(6))
def test_folds_keep_groups_together_cover_the_pool_once_and_balance(seed):
    rng = random.Random(seed)
    ids = [f"id{i:03d}" for i in range(120)]
    shuffled = ids[:]
    rng.shuffle(shuffled)
    groups, at = [], 0
    for size in (2, 3, 5, 2, 9, 2, 4):
        groups.append(set(shuffled[at : at + size]))
        at += size
    folds = make_folds(ids, groups, 5, seed=seed)
    where = {i: f for f, members in enumerate(folds) for i in members}
    assert sorted(where) == ids and sum(map(len, folds)) == len(ids)  # every id exactly once
    for g in groups:
        assert len({where[i] for i in g}) == 1, f"group {sorted(g)} straddles folds"
    assert max(map(len, folds)) - min(map(len, folds)) <= 2
    assert folds == make_folds(list(reversed(ids)), groups, 5, seed=seed)  # deterministic
    splits = fold_splits(folds)
    for f, s in enumerate(splits):
        assert s["val"] == folds[f] and not set(s["train"]) & set(s["val"])
        assert len(s["train"]) + len(s["val"]) == len(ids)


def test_stratified_folds_spread_a_rare_label_and_bad_fold_counts_are_refused():
    ids = [f"i{k:03d}" for k in range(100)]
    labels = {i: ("rare" if k % 10 == 0 else "common") for k, i in enumerate(ids)}
    folds = make_folds(ids, [], 5, seed=1, stratify=labels)
    assert [sum(labels[i] == "rare" for i in f) for f in folds] == [2, 2, 2, 2, 2]
    with pytest.raises(UserError, match="at least 2"):
        make_folds(ids, [], 1)
    with pytest.raises(UserError, match="only 2"):
        make_folds(["a", "b", "c"], [{"a", "b"}], 3)


# ------------------------------------------------------------------------------ the cv command
@pytest.fixture(scope="module")
def cv_data(synthetic_data, tmp_path_factory):
    """The synthetic data set plus an exact copy of one training image (a near-duplicate pair)."""
    data = tmp_path_factory.mktemp("cvdata") / "data"
    shutil.copytree(synthetic_data, data)
    meta = json.loads((data / "dataset.json").read_text())
    src = meta["split"]["train"][0]
    for sub in ("images", "masks"):
        f = next((data / sub).glob(f"{src}.*"))
        shutil.copy(f, f.with_name(f"copy_of_{src}{f.suffix}"))
    meta["split"]["train"].append(f"copy_of_{src}")
    (data / "dataset.json").write_text(json.dumps(meta))
    return data, src, meta["split"]


@pytest.mark.slow
def test_cv_folds_never_touch_the_test_split_and_keep_duplicates_together(cv_data, tmp_path):
    data, src, split = cv_data
    s = cross_validate(data, tmp_path / "cv", folds=3, prepare=True, quiet=True, **FOLD_TRAINING)
    assert s["missing"] == [0, 1, 2]
    cv = open_cv(tmp_path / "cv")
    folds = cv.folds()
    assert sorted(folds["pool"]) == sorted(split["train"]) and folds["test"] == sorted(split["test"])
    vals = [f["val"] for f in folds["folds"]]
    assert sorted(i for v in vals for i in v) == sorted(split["train"])
    for f in folds["folds"]:
        assert not (set(f["train"]) | set(f["val"])) & set(split["test"])
    assert folds["duplicate_groups"] == 1
    assert sum({src, f"copy_of_{src}"} <= set(v) for v in vals) == 1  # the pair sits in one fold
    assert cv.paths.plan.is_file() and json.loads(cv.paths.run_json.read_text())["kind"] == "cv"
    # a few steps per fold: the CV plan says one run of the whole budget is expected to win
    import yaml

    ensemble = yaml.safe_load(cv.paths.plan.read_text())["ensemble"]
    assert ensemble["value"] == "cv" and "each fold trains only" in ensemble["reason"]
    assert not cv.fold_dir(0).exists()  # --prepare trains nothing


@pytest.fixture(scope="module")
def finished_cv(cv_data, tmp_path_factory):
    """A 3-fold CV interrupted after folds 0 and 1, then run again to the end; returns
    ``(cv folder, checkpoint mtimes of folds 0 and 1 before the second run, first result)``."""
    data, _, _ = cv_data
    out = tmp_path_factory.mktemp("cv") / "cv"
    cross_validate(data, out, folds=3, fold=0, quiet=True, **FOLD_TRAINING)
    first = cross_validate(data, out, folds=3, fold=1, quiet=True, **FOLD_TRAINING)
    cv = open_cv(out)
    before = {i: cv.fold(i).checkpoint_path("best").stat().st_mtime_ns for i in (0, 1)}
    cross_validate(data, out, folds=3, quiet=True, **FOLD_TRAINING)
    return cv, before, first


def test_an_interrupted_cv_resumes_without_retraining_finished_folds(finished_cv):
    cv, before, first = finished_cv
    assert first == {"missing": [2]}
    for i in (0, 1):
        assert cv.fold(i).checkpoint_path("best").stat().st_mtime_ns == before[i]  # not retrained
    assert cv.fold(2).has_checkpoint("last") and cv.fold_state(2) == "done"  # the missing fold was trained
    summary = json.loads(cv.summary_json.read_text())
    pool = cv.folds()["pool"]
    assert summary["out_of_fold"]["n_images"] == len(pool) == sum(r["n_images"] for r in summary["folds"])
    assert sorted(p.stem for p in cv.oof_dir.glob("*.npy")) == sorted(pool)
    proba = cv.load_oof(pool[0])
    assert proba.shape[0] == 3 and np.allclose(proba.sum(0), 1.0, atol=2e-2)
    assert "out-of-fold, pooled over" in format_summary(summary) and 0.0 <= summary["mean"]["dice"] <= 1.0
    # the field metrics of the data (issue 25): per fold, over the folds and out of fold
    groups = summary["field"]["groups"]
    assert "boundary" in groups and summary["field"]["reason"]
    assert 0.0 <= summary["field_scores"]["out_of_fold"]["nsd"] <= 1.0 and "nsd" in summary["folds"][0]
    assert "field metrics (" in format_summary(summary)
    # issue 22: the temperature fitted on the out-of-fold probabilities, kept in CV/postprocess.yaml
    from biomedseg.postprocess.ops import load_postprocess

    calibration = summary["calibration"]
    assert calibration["n_pixels"] > 0 and 0 <= calibration["ece_after"] <= 1 and 0 <= calibration["ece_before"] <= 1
    assert load_postprocess(cv.root).temperature == calibration["temperature"] > 0


@pytest.mark.slow
def test_a_fold_interrupted_mid_training_resumes_from_its_last_checkpoint(finished_cv, cv_data, tmp_path, monkeypatch):
    from biomedseg.training import api

    calls, train = [], api.train
    monkeypatch.setattr(api, "train", lambda *a, **kw: calls.append((kw["resume"], a[1].name)) or train(*a, **kw))
    data, _, _ = cv_data
    cv, _, _ = finished_cv
    out = tmp_path / "cv"
    shutil.copytree(cv.root, out)
    copy = open_cv(out)
    (copy.fold_dir(1) / "cv_fold.json").unlink()  # fold 1 stopped during training: only last.pt is left
    (copy.fold(1).paths.checkpoint("best")).unlink()
    for sid in copy.folds()["folds"][1]["val"]:
        copy.oof_path(sid).unlink()
    cross_validate(data, out, folds=3, quiet=True, **FOLD_TRAINING)
    assert copy.fold_state(1) == "done" and all(copy.oof_path(s).is_file() for s in copy.folds()["folds"][1]["val"])
    assert calls == [(True, "fold_1")]  # only fold 1, continued from its last.pt
    rows = copy.fold(1).paths.metrics.read_text().strip().splitlines()
    assert len(rows) == 2  # header + the one epoch: resumed, not trained again from scratch


@pytest.mark.slow
def test_tune_postprocess_on_a_cv_folder_uses_every_out_of_fold_prediction(finished_cv):
    from biomedseg.workflows.tune_postprocess import tune_postprocess

    cv, _, _ = finished_cv
    cfg = tune_postprocess(cv.root, device="cpu", gate=False)
    assert cfg.tuning["split"] == "out-of-fold"
    assert cfg.tuning["n_images"] == len(cv.folds()["pool"])
    assert cv.paths.postprocess.is_file()
    with pytest.raises(UserError, match="out-of-fold predictions of its own data"):
        tune_postprocess(cv.root, data=cv.root, device="cpu")


def test_the_cv_folder_predicts_as_the_ensemble_of_its_folds(finished_cv, tmp_path):
    from biomedseg.engine.ensemble_model import EnsembleModel
    from biomedseg.inference.run import load_run
    from biomedseg.runs import open_run
    from biomedseg.workflows.comparison import training_summary
    from biomedseg.workflows.evaluation import evaluate

    cv, _, _ = finished_cv
    loaded = load_run(cv.root, device="cpu")
    assert isinstance(loaded.model, EnsembleModel) and len(loaded.model.members) == 3
    assert loaded.info.split == {"test": cv.folds()["test"]}
    m = evaluate(cv.root, out=tmp_path / "eval", split="test", overlays=False, device="cpu", quiet=True)
    assert m["n_images"] == len(cv.folds()["test"])
    summary, curves = training_summary(open_run(cv.root))
    assert curves is None and summary["steps"] == sum(training_summary(cv.fold(i))[0]["steps"] for i in range(3))


@pytest.mark.slow
def test_cv_refuses_another_fold_count_and_a_folder_that_is_not_a_cv(finished_cv, cv_data, tmp_path):
    data, _, _ = cv_data
    cv, _, _ = finished_cv
    with pytest.raises(UserError, match="3 folds, not 4"):
        cross_validate(data, cv.root, folds=4, quiet=True, **FOLD_TRAINING)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="not a cross-validation folder"):
        cross_validate(data, tmp_path / "x", folds=3, quiet=True, **FOLD_TRAINING)
    counts = Counter(len(f["val"]) for f in cv.folds()["folds"])
    assert sum(k * v for k, v in counts.items()) == len(cv.folds()["pool"])


@pytest.mark.slow
def test_cli_cv_summary_tune_on_oof_and_ensemble_of_folds(finished_cv, cv_data, tmp_path):
    from test_cli import assert_user_error, run_cli

    data, _, _ = cv_data
    cv, _, _ = finished_cv
    r = run_cli("cv", data, "--out", cv.root, "--folds", "3", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    assert "out-of-fold, pooled over" in r.stdout and "mean" in r.stdout
    r = run_cli("tune-postprocess", cv.root, "--device", "cpu", "--no-gating", "-q")
    assert r.returncode == 0, r.stderr
    assert f"{len(cv.folds()['pool'])} out-of-fold images" in r.stdout
    r = run_cli("ensemble", cv.fold_dir(0), cv.fold_dir(1), "--out", tmp_path / "ens", "--weights", "1,3")
    assert r.returncode == 0 and "ensemble of 2 runs" in r.stdout, r.stderr
    assert_user_error(run_cli("ensemble", cv.fold_dir(0), "--out", tmp_path / "one"), "one run is no ensemble")
    assert_user_error(
        run_cli("ensemble", cv.fold_dir(0), cv.fold_dir(1), "--out", tmp_path / "w", "--weights", "1"),
        "1 weights for 2 members",
    )


def test_an_explicit_training_split_keeps_the_test_split_aside_and_names_unknown_ids(cv_data):
    from biomedseg.runs.config import build_config
    from biomedseg.training.data_setup import prepare_data

    data, _, split = cv_data
    cfg = build_config({})
    train, val = split["train"][:-2], split["train"][-2:]
    setup = prepare_data(cfg, data, split={"train": train, "val": val})
    assert setup.split == {"train": train, "val": val, "test": sorted(split["test"])}
    with pytest.raises(UserError, match="ids of the test split"):
        prepare_data(cfg, data, split={"train": train + split["test"][:1], "val": val})
    with pytest.raises(UserError, match="no image/mask pair"):
        prepare_data(cfg, data, split={"train": train, "val": ["nope"]})
