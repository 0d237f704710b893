"""Prediction of many files as Dask tasks on a 2-process LocalCluster."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_fake_run

pytest.importorskip("distributed", reason='Dask is optional: pip install "biomedseg[distributed]"')


def make_run(run_dir, patch=64):
    from biomedseg.models import create_model

    torch.manual_seed(0)
    kw = {"depth": 3, "base_channels": 8, "num_res_units": 1}
    return write_fake_run(
        run_dir,
        "unet",
        create_model("unet", 1, 2, **kw).state_dict(),
        None,
        [],
        patch_size=patch,
        batch_size=4,
        model_kwargs=kw,
    )


def write_images(folder, n: int, shape, seed: int = 0):
    """``n`` random grey PNGs ``im0.png`` ... in ``folder`` (created); returns the folder."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_cluster_predicts_every_file_once_per_worker_load(tmp_path):
    from distributed import Client

    from biomedseg.inference.predict.batch import predict
    from biomedseg.inference.predict.distributed import loaded_runs, local_cluster, predict_distributed

    run = make_run(tmp_path / "run")
    images = write_images(tmp_path / "images", 4, (80, 70))
    out = tmp_path / "out"
    # LocalCluster(n_workers=2, threads_per_worker=1, processes=True), workers forked from a
    # fork server that imported torch once
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        s = predict_distributed(run, [images], out, client=client, overlays=False, rle=tmp_path / "sub.csv", quiet=True)
        assert not s.failed, s.failed
        assert sorted(p.name for p in s.done) == [f"im{i}.png" for i in range(4)]
        # each worker process loaded the run at most once, however many tasks it ran
        counts = client.run(loaded_runs)
        assert len(counts) == 2 and all(c <= 1 for c in counts.values()) and sum(counts.values()) >= 1
        assert 1 <= len(s.workers) <= 2
        # a second run submits nothing: every mask exists
        again = predict_distributed(run, [images], out, client=client, quiet=True)
        assert again.done == [] and len(again.skipped) == 4
    # identical to the single-process result
    ref = predict(run, [images], tmp_path / "ref", overlays=False, quiet=True)
    assert len(ref.done) == 4
    for i in range(4):
        a = np.asarray(Image.open(out / f"im{i}.png"))
        b = np.asarray(Image.open(tmp_path / "ref" / f"im{i}.png"))
        assert np.array_equal(a, b)
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "img,pixels" and len(lines) == 5


def _count_predictors():
    """Installed in each worker: counts the predictors the process builds."""
    from biomedseg.inference import run as run_module

    if getattr(run_module, "_built", None) is None:
        run_module._built = 0
        original = run_module.LoadedRun.predictor

        def counting(self, *args, **kwargs):
            run_module._built += 1
            return original(self, *args, **kwargs)

        run_module.LoadedRun.predictor = counting


def _predictors_built():
    from biomedseg.inference import run as run_module

    return run_module._built


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_cluster_prediction_keeps_the_engine_reuses_the_predictor_and_takes_exported_files(tmp_path):
    """predict --scheduler: ``engine`` reaches the workers, each worker builds its predictor once
    however many files it predicts, an exported file is accepted, and each task's torch threads are
    the worker's cores divided by the tasks running at once on them."""
    import os

    import cloudpickle
    from distributed import Client

    import test_distributed
    from biomedseg.inference.exported import graph
    from biomedseg.inference.exported.format import build_metadata, metadata_json
    from biomedseg.inference.predict.batch import predict
    from biomedseg.inference.predict.distributed import local_cluster, predict_distributed, prepared_predictors
    from biomedseg.inference.run import load_run

    run = make_run(tmp_path / "run")
    images = write_images(tmp_path / "images", 5, (80, 70))
    loaded = load_run(run, device="cpu")
    module, section = graph.torchscript_module(loaded.model, 1, loaded.tile_size)
    exported = tmp_path / "model.pt"
    graph.save_torchscript(module, exported, metadata_json(build_metadata(loaded, None, section)))
    cloudpickle.register_pickle_by_value(test_distributed)  # the workers cannot import the tests
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.run(_count_predictors)
        s = predict_distributed(
            run, [images], tmp_path / "ort", client=client, engine="onnxruntime", overlays=False, quiet=True
        )
        assert not s.failed, s.failed
        assert len(s.done) == 5 and s.engines == ["onnxruntime"]
        built = client.run(_predictors_built)
        assert all(n <= 1 for n in built.values()) and sum(built.values()) == len(s.workers)
        assert sorted(client.run(prepared_predictors).values()) == sorted(built.values())
        # both workers run on this machine's cores, one task each at a time
        assert s.task_threads == [max(1, len(os.sched_getaffinity(0)) // 2)]
        t = predict_distributed(
            exported, [images], tmp_path / "ts", client=client, overlays=False, quiet=True, rle=tmp_path / "ts.csv"
        )
        assert not t.failed, t.failed
        assert len(t.done) == 5 and t.engines == ["torch"]
    cloudpickle.unregister_pickle_by_value(test_distributed)
    ref = predict(exported, [images], tmp_path / "ref", overlays=False, quiet=True, threads=1)
    assert len(ref.done) == 5
    for i in range(5):
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "ts" / f"im{i}.png")),
            np.asarray(Image.open(tmp_path / "ref" / f"im{i}.png")),
        )
    assert len((tmp_path / "ts.csv").read_text().splitlines()) == 6
