"""Issue 26 (code review): each defect has a test here that fails on the code before its fix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from biomedseg.core.errors import UserError


# ---------------------------------------------------------------- 4: export --checkpoint X
def test_cli_export_unknown_checkpoint_is_one_line_user_error(synthetic_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from biomedseg.cli import app
    from test_export import make_run

    run = make_run(tmp_path / "run", synthetic_data, "unet")
    r = CliRunner().invoke(
        app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--checkpoint", "epoch3"]
    )
    assert isinstance(r.exception, UserError), repr(r.exception)
    assert "--checkpoint epoch3" in str(r.exception) and "best" in str(r.exception)
    assert "\n" not in str(r.exception)
    assert not list(tmp_path.glob("m*"))  # refused before anything is written


# ---------------------------------------------------------------- 7: exports carry no local paths or login name
def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.fixture(scope="module")
def package(synthetic_data, tmp_path_factory):
    """A bioimage.io export of a run whose post-processing was tuned on ``synthetic_data``, made
    where ``getpass.getuser()`` fails (a container without a passwd entry)."""
    pytest.importorskip("bioimageio.spec")
    import getpass

    from biomedseg.export.writer import export_run
    from test_export import POSTPROCESS, make_run

    def no_passwd_entry():
        raise KeyError("getpwuid(): uid not found: 12345")

    tmp = tmp_path_factory.mktemp("package")
    tuned = POSTPROCESS + f"tuning: {{split: val, data: {str(synthetic_data.resolve())!r}}}\n"
    run = make_run(tmp / "myrun", synthetic_data, "unet", postprocess=tuned)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(getpass, "getuser", no_passwd_entry)
        return export_run(run, "bioimageio", tmp / "model.zip")


def test_export_metadata_names_no_local_path_nor_login(package, synthetic_data):
    """bioimage.io package (both weights and rdf.yaml) and its parity file; works without a passwd entry."""
    import getpass
    import json
    import os
    import zipfile

    import yaml

    from biomedseg.inference.exported.engines import open_exported

    try:
        login = getpass.getuser()
    except Exception:  # noqa: BLE001
        login = None
    with zipfile.ZipFile(package.path) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    docs = {
        "rdf": rdf,
        "onnx": open_exported(package.path, engine="onnxruntime").metadata,
        "torchscript": open_exported(package.path, engine="torch").metadata,
        "parity": json.loads(package.parity_path.read_text()),
    }
    root = package.path.parent
    for name, doc in docs.items():
        for s in _strings(doc):
            assert not os.path.isabs(s) and str(root) not in s and str(synthetic_data) not in s, (name, s)
    source = docs["onnx"]["source"]
    assert source["run"] == "myrun" and source["data"] == synthetic_data.name
    assert len(source["weights_sha256"]) == 64 and len(source["dataset_sha256"]) == 64
    if login:
        assert all(a["name"] != login for a in rdf["authors"]), rdf["authors"]
    assert docs["onnx"]["postprocess"]["tuning"]["data"] == synthetic_data.name


# ---------------------------------------------------------------- 8: malformed packages; ONNX preferred to TorchScript
@pytest.mark.parametrize(
    "rdf",
    [
        "- just\n- a list\n",
        "weights: {onnx: weights.onnx}\n",
        "weights: [onnx]\n",
        "weights: {onnx: {source: [1]}}\n",
        "config: [1]\n",
    ],
)
def test_malformed_package_is_a_user_error(rdf, tmp_path):
    import zipfile

    from biomedseg.inference.exported.engines import open_package

    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rdf.yaml", rdf)
    with pytest.raises(UserError, match="bad.zip: "):
        open_package(path, device="cpu")


def test_package_auto_prefers_onnx_and_does_not_load_torchscript(package, monkeypatch):
    pytest.importorskip("onnxruntime")
    from biomedseg.inference.exported import engines

    def refuse(*args, **kwargs):
        raise AssertionError("TorchScript loaded although ONNX weights are in the package")

    monkeypatch.setattr(engines, "script_network", refuse)
    assert engines.open_package(package.path, device="cpu", engine="auto").engine == "onnxruntime"


# ---------------------------------------------------------------- 9a: TorchScript export patches no torch function
def test_torchscript_export_of_segnet_patches_no_torch_global(monkeypatch):
    import torch
    import torch.nn.functional as F

    from biomedseg.inference.exported import graph
    from biomedseg.models import create_model

    globals_before = dict(vars(F))
    seen = []
    real_trace = torch.jit.trace

    def trace(*args, **kwargs):  # what a predicting thread would call while the export traces
        seen.append({k: v for k, v in vars(F).items() if globals_before.get(k, object()) is not v})
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", trace)
    torch.manual_seed(0)
    model = create_model("segnet", 1, 3, stages=3, base_channels=8).eval()
    module, _ = graph.torchscript_module(model, 1, 32)
    assert seen == [{}], f"torch.nn.functional changed during tracing: {list(seen[0])}"
    x = torch.randn(1, 1, 48, 72)  # another size than traced: the unpooling sizes stay dynamic
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-5)


# ---------------------------------------------------------------- 9b: Prefetcher.next() when its thread died
class _Died(BaseException):
    """Ends a thread past ``except Exception`` (as SystemExit or a C-level abort path would)."""


def test_prefetcher_raises_the_error_that_ended_its_thread():
    import threading

    import numpy as np

    from biomedseg.training.loader import Prefetcher

    class DiesOnSecond:
        def __init__(self):
            self.i = 0

        def batch(self, n):
            self.i += 1
            if self.i == 2:
                raise _Died("sampler thread ended")
            return np.zeros((n, 1, 4, 4), np.float32), np.zeros((n, 4, 4), np.int64)

    pf = Prefetcher(DiesOnSecond(), 2)
    outcome = []

    def consume():
        try:
            outcome.append(pf.next())
            outcome.append(pf.next())
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout=10)
    pf.close()
    assert not consumer.is_alive(), "Prefetcher.next() blocked after its thread died"
    assert len(outcome) == 2 and isinstance(outcome[1], _Died) and "sampler thread ended" in str(outcome[1])


# ---------------------------------------------------------------- 9d: atomic writes are fsynced
def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import os
    import stat

    from biomedseg.io import writers

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace",))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "sub" / "a.json"
    writers.write_json(path, {"a": 1})
    assert events == [
        ("fsync", "file", path.stat().st_ino),
        ("replace",),
        ("fsync", "folder", path.parent.stat().st_ino),
    ]
    doc = " ".join(writers.__doc__.split())
    assert "power loss" in doc and "crash of the process" in doc


# ---------------------------------------------------------------- 9e: ensemble of one CV folder
def test_cli_ensemble_of_one_cv_folder_is_the_ensemble_of_its_folds(tmp_path):
    import json

    from typer.testing import CliRunner

    from biomedseg.cli import app
    from biomedseg.runs.cv import TRAINED, create_cv
    from biomedseg.runs.ensemble import write_ensemble_records
    from test_ensemble import make_member

    cv = create_cv(tmp_path / "CV", folds=2)
    for i, mean in enumerate((100.0, 90.0)):
        make_member(cv.fold_dir(i), i, {"mean": [mean], "std": [50.0]})
        cv.write_fold_record(i, {"status": TRAINED})
    write_ensemble_records(cv, [cv.fold(0), cv.fold(1)])  # as `cv` does when folds finish
    r = CliRunner().invoke(app, ["ensemble", str(cv.root), "--out", str(tmp_path / "ENS"), "--copy"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "ensemble of 2 runs" in r.output
    members = json.loads((tmp_path / "ENS" / "run.json").read_text())["members"]
    assert [m["weight"] for m in members] == [0.5, 0.5]
    r = CliRunner().invoke(app, ["ensemble", str(cv.fold_dir(0)), "--out", str(tmp_path / "ONE")])
    assert isinstance(r.exception, UserError) and "CV" in str(r.exception), (r.output, r.exception)
    assert not (tmp_path / "ONE").exists()


# ---------------------------------------------------------------- 9c: the planned lr belongs to the planned optimiser
@pytest.mark.parametrize("from_file", [False, True])
def test_user_optimizer_without_lr_gets_its_own_default_not_the_planned_adamw_rate(from_file, tmp_path, monkeypatch):
    import torch
    import yaml

    from biomedseg.planning import stage
    from biomedseg.planning.planner import make_plan
    from biomedseg.runs.config import DEFAULT_LR, build_config
    from test_planner import FP

    monkeypatch.setattr(stage, "fingerprint_of", lambda data: dict(FP))
    plan_file = None
    if from_file:  # a sweep's shared SWEEP/plan.yaml, planned for the default optimiser
        plan_file = tmp_path / "plan.yaml"
        plan_file.write_text(yaml.safe_dump(make_plan(FP, None, "cpu"), sort_keys=False))
    cpu = torch.device("cpu")
    data = SimpleNamespace(n_classes=len(FP["class_share"]), setup=SimpleNamespace(channels=FP["channels"]))
    planned_opt = make_plan(FP, None, "cpu")["optimizer"]["value"]
    planned_lr = make_plan(FP, None, "cpu")["lr"]["value"]
    other = "sgd"  # the review's case: `--param optimizer=adam,adamw,sgd` without lr

    cfg, plan = stage.plan_config(build_config({"optimizer": other}), {"optimizer": other}, data, cpu, plan_file)
    assert cfg.optimizer == other and cfg.lr == DEFAULT_LR[other] != planned_lr
    assert plan["lr"]["value"] == DEFAULT_LR[other]
    assert other in plan["lr"]["reason"] and planned_opt in plan["lr"]["reason"]

    explicit = {"optimizer": other, "lr": 0.05}  # the user's rate wins
    cfg, plan = stage.plan_config(build_config(explicit), explicit, data, cpu, plan_file)
    assert cfg.lr == 0.05 and plan["lr"]["reason"] == stage.USER_REASON
    cfg, plan = stage.plan_config(build_config({}), {}, data, cpu, plan_file)  # no choice: the plan's pair
    assert (cfg.optimizer, cfg.lr) == (planned_opt, planned_lr)


# -------------------------------------------------- 11: one noisy step measurement does not flip the width
def test_one_outlier_step_measurement_does_not_flip_the_planned_width():
    from biomedseg.planning.planner import make_plan
    from test_planner import FP

    budget = 600  # 0.4 s per step at width 32: ~1275 steps fit, full width; 2.1 s: ~240, narrowed

    def fake_timer(script):
        calls = {}

        def step_time(patch, batch, depth, width):
            calls[width] = calls.get(width, 0) + 1
            seq = script[width]
            return seq[min(calls[width] - 1, len(seq) - 1)]

        return step_time, calls

    step_time, calls = fake_timer({32: [2.1, 0.4, 0.4], 16: [0.13]})  # the first measurement is an outlier
    entry = make_plan(FP, budget, "cpu", step_time=step_time)["model_kwargs.base_channels"]
    assert entry["value"] == 32, entry["reason"]
    assert "0.40s per step" in entry["reason"] and "0.40-2.10s" in entry["reason"]  # the spread is shown
    assert calls[32] == 3  # re-measured: the first two disagreed

    step_time, calls = fake_timer({32: [2.1], 16: [0.55]})  # a machine that is slow every time still narrows
    entry = make_plan(FP, budget, "cpu", step_time=step_time)["model_kwargs.base_channels"]
    assert entry["value"] == 16 and "2.10-2.10s" in entry["reason"]


def test_step_timer_measures_again_without_a_new_warm_up(monkeypatch):
    """The planner's repeated measurements of one width reuse the warmed-up network: a warm-up step
    and one timed step per measurement (with a clock that advances 1 s per forward pass)."""
    import time

    import biomedseg.models
    from biomedseg.planning.planner import measure_robustly
    from biomedseg.planning.timing import STEP_MEASUREMENTS, STEPS_PER_MEASUREMENT, step_timer

    clock, forwards, built = [0.0], [], []
    real_create = biomedseg.models.create_model

    def create(*args, **kwargs):
        net = real_create(*args, **kwargs)
        built.append(kwargs)

        def one_second_forward(module, inputs):
            forwards.append(inputs[0].shape[0])
            clock[0] += 1.0

        net.register_forward_pre_hook(one_second_forward)
        return net

    monkeypatch.setattr(biomedseg.models, "create_model", create)
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    seconds, spread = measure_robustly(step_timer(1, 2, "cpu"), 32, 2, 3, 8)
    assert seconds == 1.0 and "median of 2 measurements, 1.00-1.00s" in spread
    assert len(built) == 1 and len(forwards) == 1 + STEP_MEASUREMENTS * STEPS_PER_MEASUREMENT


# -------------------------------------------------- 3: sweep on a remote cluster with the default SQLite study
class _FakeClient:
    """Answers ``scheduler_info()`` like a Dask client with workers on the given hosts."""

    def __init__(self, *hosts):
        self.workers = {f"tcp://{h}:{40000 + i}": {"host": h} for i, h in enumerate(hosts)}

    def scheduler_info(self):
        return {"workers": self.workers}


def _fake_connect(client):
    import contextlib

    @contextlib.contextmanager
    def connect(scheduler, threads_per_worker: int = 1):
        yield client

    return connect


def test_sweep_on_remote_workers_with_sqlite_study_is_refused_with_the_fix(synthetic_data, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    pytest.importorskip("distributed")
    from biomedseg.runtime import cluster
    from biomedseg.sweeps import run as sweeps

    monkeypatch.setattr(cluster, "connect", _fake_connect(_FakeClient("127.0.0.1", "192.0.2.17")))
    out = tmp_path / "SWEEP"
    with pytest.raises(UserError, match=r"study\.db: .*192\.0\.2\.17.*--storage postgresql://"):
        sweeps.sweep(
            synthetic_data,
            out,
            ["optimizer=adam,sgd"],
            scheduler="tcp://head:8786",
            auto_plan=False,
            epochs=1,
            quiet=True,
        )
    assert not out.exists()  # refused before anything was written


def test_sweep_storage_check_accepts_local_workers_and_a_database_server(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import socket

    from biomedseg.runtime import cluster
    from biomedseg.sweeps.run import check_cluster_storage

    monkeypatch.setattr(cluster, "connect", _fake_connect(_FakeClient("127.0.0.1", socket.gethostname())))
    check_cluster_storage("tcp://head:8786", None, tmp_path / "SWEEP")  # all workers here: SQLite is fine
    monkeypatch.setattr(cluster, "connect", _fake_connect(_FakeClient("192.0.2.17")))
    check_cluster_storage("tcp://head:8786", "postgresql://u:p@db/sweeps", tmp_path / "SWEEP")
    with pytest.raises(UserError, match="--storage"):
        check_cluster_storage("tcp://head:8786", f"sqlite:///{tmp_path}/s.db", tmp_path / "SWEEP")


# ---------------------------------------------------------------- 2: parallel `cv --fold K` without --prepare
def _parallel_folds(data, out, monkeypatch, k=2):
    """``cross_validate(fold=i)`` for each fold in its own thread at once (training stubbed out);
    returns how often the plan was made and the folds written, and the plan each fold trained with."""
    import threading
    import time

    import biomedseg.training.api as api
    from biomedseg.runs.cv import CVFolder
    from biomedseg.workflows import crossval

    counts = {"plan": 0, "folds": 0}
    used = {}
    real_plan_data, real_write_folds = api.plan_data, CVFolder.write_folds

    def plan_data(*args, **kwargs):  # the shared plan with its own step measurement
        counts["plan"] += 1
        time.sleep(1.0)  # long enough for the other process to get there too
        return real_plan_data(*args, **kwargs)

    def write_folds(self, record):
        counts["folds"] += 1
        real_write_folds(self, record)

    def run_fold(cv, i, *args):
        used[i] = cv.paths.plan.read_text()

    monkeypatch.setattr(api, "plan_data", plan_data)
    monkeypatch.setattr(CVFolder, "write_folds", write_folds)
    monkeypatch.setattr(crossval, "run_fold", run_fold)
    errors = []

    def one(i):
        try:
            crossval.cross_validate(
                data,
                out,
                folds=k,
                fold=i,
                audit={},
                quiet=True,
                time_budget="2m",
                **{"device": "cpu", "num_threads": 1},
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads), errors
    return counts, used


@pytest.mark.parametrize("started", [False, True])
def test_parallel_cv_fold_processes_prepare_the_folds_and_plan_once(started, synthetic_data, tmp_path, monkeypatch):
    from biomedseg.runs.cv import create_cv

    if started:  # the CV folder exists (run.json), its folds and plan not yet
        create_cv(tmp_path / "CV", folds=2, budget_per_fold_s=60.0, stratified=False)
    counts, used = _parallel_folds(synthetic_data, tmp_path / "CV", monkeypatch)
    assert counts == {"plan": 1, "folds": 1}, counts
    assert len(used) == 2 and used[0] == used[1] == (tmp_path / "CV" / "plan.yaml").read_text()
    assert not (tmp_path / "CV" / ".prepare.lock").exists()


def test_a_stale_prepare_lock_is_taken_over(synthetic_data, tmp_path, monkeypatch):
    import json
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "CV"
    out.mkdir()
    lock = out / ".prepare.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))  # its process is gone
    counts, _ = _parallel_folds(synthetic_data, out, monkeypatch, k=2)
    assert counts["plan"] == 1 and not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "another-machine"}))  # not refreshed for long
    os.utime(lock, (0, 0))
    (out / "plan.yaml").unlink()
    counts, _ = _parallel_folds(synthetic_data, out, monkeypatch, k=2)
    assert counts["plan"] == 1 and not lock.exists()
