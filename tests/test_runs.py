"""The run-folder module: layout, records, open/create, and runs written by earlier versions."""

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomedseg.core.errors import UserError
from biomedseg.runs import RUN_FORMAT_VERSION, DatasetInfo, RunFolder, create_run, layout, open_run

FIXTURE = Path(__file__).parent / "fixtures" / "run_format_v1"
SRC = Path(__file__).resolve().parents[1] / "src" / "biomedseg"


def test_run_written_before_run_json_opens_as_format_1():
    run = open_run(FIXTURE / "run")
    assert run.info().format_version == 1 and run.info().kind == "run"
    info = run.dataset()
    assert isinstance(info, DatasetInfo)
    assert info.classes == ["background", "cell", "filament"] and info.n_classes == 3 and info.channels == 1
    assert run.checkpoint_path("best").is_file()
    assert run.checkpoint_path("best") == run.paths.checkpoint("best")


def test_run_written_before_run_json_predicts_the_masks_it_predicted_then(tmp_path):
    from biomedseg.inference.predict.batch import predict

    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)  # a read-only checkout must not matter
    summary = predict(
        run, [str(FIXTURE / "input" / "syn_006.png")], tmp_path / "pred", quiet=True, overlays=False, device="cpu"
    )
    assert not summary.failed
    got = np.asarray(Image.open(tmp_path / "pred" / "syn_006.png"))
    want = np.asarray(Image.open(FIXTURE / "expected" / "syn_006.png"))
    assert got.shape == want.shape == (64, 64)
    assert np.array_equal(got, want)


def test_train_writes_run_json_and_typed_records(trained_run):
    run = open_run(trained_run)
    info = run.info()
    assert info.format_version == RUN_FORMAT_VERSION and info.kind == "run"
    assert info.created and info.biomedseg_version
    assert run.dataset().classes == ["background", "cell", "filament"]
    plan = run.plan()
    assert plan and all("value" in e and "reason" in e for e in plan.values())


def test_open_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="no such run folder"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a biomedseg run folder"):
        open_run(tmp_path / "empty")


def test_open_run_refuses_a_newer_format(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    (run / layout.RUN_JSON).write_text(json.dumps({"kind": "run", "format_version": RUN_FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match="newer than this biomedseg"):
        open_run(run)


def test_open_run_names_the_file_and_field_of_a_broken_record(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    info = json.loads((run / layout.DATASET).read_text())
    del info["classes"]
    (run / layout.DATASET).write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"dataset\.json: field 'classes'"):
        open_run(run).dataset()


def test_create_run_refuses_overwriting_and_empty_resume(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    with pytest.raises(UserError, match="nothing to resume"):
        create_run(run, resume=True)  # the fixture keeps best.pt only
    shutil.copy(run / "checkpoints" / "best.pt", RunFolder(run).paths.checkpoint("last"))
    with pytest.raises(UserError, match="already holds a run"):
        create_run(run, resume=False)
    assert create_run(run, resume=True).root == run
    assert create_run(tmp_path / "new").root == tmp_path / "new"


def _non_docstring_constants(tree):
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_run_folder_file_names_are_spelled_in_the_runs_package_only():
    names = {
        layout.RUN_JSON,
        layout.CONFIG,
        layout.PLAN,
        layout.CHECKPOINTS,
        layout.METRICS,
        layout.CURVES,
        layout.TENSORBOARD,
        layout.POSTPROCESS,
        layout.DDP,
        layout.TRUST,
        "best.pt",
        "last.pt",
    }
    found = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "runs":
            continue
        for node in _non_docstring_constants(ast.parse(path.read_text())):
            if node.value in names:
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert not found, found
