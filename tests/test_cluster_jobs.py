"""CV folds, sweep trials and prediction files as jobs on a local 2-worker Dask cluster
(``--scheduler``): the jobs run in the workers, a failed job does not stop the others, a finished
CV is not trained again, a fold trained on the cluster equals the fold trained here."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from biomedseg.core.errors import UserError
from conftest import TINY
from test_cli import run_cli

pytest.importorskip("distributed", reason='Dask is optional: pip install "biomedseg[distributed]"')

from biomedseg.runtime import cluster  # noqa: E402

FOLDS = {**TINY, "epochs": 1, "iterations_per_epoch": 2, "device": "cpu", "num_threads": 1, "seed": 0}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with cluster.local_cluster(n_workers=2, threads_per_worker=1) as c, Client(c) as cl:
        yield cl


def test_scheduler_forms_and_bad_ones():
    assert cluster.parse_local("local") == cluster.DEFAULT_LOCAL_WORKERS
    assert cluster.parse_local("LOCAL:3") == 3 and cluster.parse_local("tcp://h:1") is None
    with pytest.raises(UserError, match="local:N"):
        cluster.parse_local("local:0")
    with pytest.raises(UserError, match="not a scheduler address"), cluster.connect("nowhere"):
        pass


def test_a_failed_job_is_reported_and_the_others_finish(client):
    jobs = [("ok", ("local:3",)), ("bad", ("local:x",)), ("ok2", ("local",))]
    results, failed = cluster.run_jobs(client, cluster.parse_local, jobs, quiet=True)
    assert results == {"ok": 3, "ok2": cluster.DEFAULT_LOCAL_WORKERS}
    assert [label for label, _ in failed] == ["bad"] and "local:N" in failed[0][1]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_cv_folds_run_as_jobs_resume_and_match_a_local_fold(synthetic_data, client, tmp_path):
    from biomedseg.runs.cv import open_cv
    from biomedseg.workflows.crossval import cross_validate

    out = tmp_path / "cv"
    s = cross_validate(synthetic_data, out, folds=3, scheduler=client, quiet=True, **FOLDS)
    assert s["failed"] == [] and "missing" not in s
    assert s["workers"] and os.getpid() not in s["workers"]  # trained in the worker processes
    cv = open_cv(out)
    assert all(cv.fold_state(i) == "done" for i in range(3)) and cv.summary_json.is_file()
    assert s["out_of_fold"]["n_images"] == len(cv.folds()["pool"])
    mtimes = [cv.fold(i).checkpoint_path("best").stat().st_mtime_ns for i in range(3)]
    # the command line, on the same cluster by its address: nothing left to train
    r = run_cli(
        "cv",
        synthetic_data,
        "--out",
        out,
        "--folds",
        "3",
        "--scheduler",
        client.scheduler.address,
        "--epochs",
        "1",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--quiet",
        *(
            a
            for k in ("model_kwargs", "patch_size", "batch_size", "iterations_per_epoch", "num_threads")
            for a in _set(k, FOLDS[k])
        ),
    )
    assert r.returncode == 0, r.stderr
    assert "out-of-fold, pooled over" in r.stdout
    assert [cv.fold(i).checkpoint_path("best").stat().st_mtime_ns for i in range(3)] == mtimes
    # fold 1 trained here, alone, is the same network
    cross_validate(synthetic_data, tmp_path / "here", folds=3, fold=1, quiet=True, **FOLDS)
    a, b = (
        _weights(cv.fold(1).checkpoint_path("best")),
        _weights(open_cv(tmp_path / "here").fold(1).checkpoint_path("best")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _set(key, value):
    if isinstance(value, dict):
        return [a for k, v in value.items() for a in ("--set", f"{key}.{k}={v}")]
    return ["--set", f"{key}={value}"]


@pytest.mark.slow
def test_sweep_trials_run_as_jobs_on_one_study(synthetic_data, client, tmp_path):
    optuna = pytest.importorskip("optuna")
    from biomedseg.runs.sweep import SweepPaths
    from biomedseg.sweeps import run as sweeps

    out = tmp_path / "sweep"
    s = sweeps.sweep(
        synthetic_data,
        out,
        ["optimizer=adam,sgd"],
        prune=False,
        scheduler=client,
        **{**TINY, "epochs": 1, "seed": 0, "quiet": True, "num_threads": 1},
    )
    assert s["finished"] == 2 and len(s["rows"]) == 2
    study = optuna.load_study(study_name=sweeps.DEFAULT_STUDY_NAME, storage=SweepPaths(out).storage_url())
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.params["optimizer"] for t in trials) == ["adam", "sgd"]  # each grid point once
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert os.getpid() not in {t.user_attrs["worker"]["pid"] for t in trials}
    assert (out / "best_config.yaml").is_file() and (out / "table.md").is_file()


def test_cli_predict_on_the_cluster_equals_predict_here(client, tmp_path):
    from test_distributed import make_run, write_images

    run = make_run(tmp_path / "run")
    images = write_images(tmp_path / "images", 3, (70, 90), seed=1)
    (images / "bad.png").write_bytes(b"not a png")  # one bad file: reported, the rest predicted
    r = run_cli(
        "predict",
        run,
        images,
        "--out",
        tmp_path / "out",
        "--scheduler",
        client.scheduler.address,
        "--no-overlays",
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.returncode == 1 and "bad.png" in r.stderr and "Traceback" not in r.stderr
    assert "3 predicted" in r.stdout and "1 failed" in r.stdout
    ref = run_cli(
        "predict", run, images / "im*.png", "--out", tmp_path / "ref", "--no-overlays", "--device", "cpu", "--quiet"
    )
    assert ref.returncode == 0, ref.stderr
    for i in range(3):
        a, b = (np.asarray(Image.open(tmp_path / d / f"im{i}.png")) for d in ("out", "ref"))
        assert np.array_equal(a, b)


def test_task_threads_are_the_cores_divided_by_the_tasks_running_on_them():
    host = ("node1", tuple(range(8)))
    # one worker of 8 threads runs 8 tasks at once on 8 cores: 1 torch thread each, not 8 (64 threads)
    assert cluster.plan_task_threads({"w1": host}, {"w1": 8}) == {"w1": 1}
    # two single-threaded workers share the 8 cores: 4 each
    assert cluster.plan_task_threads({"w1": host, "w2": host}, {"w1": 1, "w2": 1}) == {"w1": 4, "w2": 4}
    # workers on other hosts (or other CPU sets of one host) do not share cores
    plan = cluster.plan_task_threads(
        {"w1": host, "w2": ("node2", tuple(range(8))), "w3": ("node1", (8, 9))}, {"w1": 2, "w2": 1, "w3": 4}
    )
    assert plan == {"w1": 4, "w2": 8, "w3": 1}
    assert cluster.task_threads({"w1": 3}) is None  # outside a worker
