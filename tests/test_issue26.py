"""Issue 26 (code review): each defect has a test here that fails on the code before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from biomedseg.core.errors import UserError


# ---------------------------------------------------------------- 4: export --checkpoint X
def test_cli_export_unknown_checkpoint_is_one_line_user_error(synthetic_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_export import make_run
    from typer.testing import CliRunner

    from biomedseg.cli import app

    run = make_run(tmp_path / "run", synthetic_data, "unet")
    r = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                                 "--checkpoint", "epoch3"])
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


def test_export_metadata_names_no_local_path_nor_login(synthetic_data, tmp_path, monkeypatch):
    """bioimage.io package (both weights and rdf.yaml) and its parity file; works without a passwd entry."""
    pytest.importorskip("bioimageio.spec")
    import getpass
    import json
    import os
    import zipfile

    import yaml
    from test_export import POSTPROCESS, make_run

    from biomedseg.export.writer import export_run
    from biomedseg.inference.exported.engines import open_exported

    tuned = POSTPROCESS + f"tuning: {{split: val, data: {str(synthetic_data.resolve())!r}}}\n"
    run = make_run(tmp_path / "myrun", synthetic_data, "unet", postprocess=tuned)

    def no_passwd_entry():
        raise KeyError("getpwuid(): uid not found: 12345")  # what a container without /etc/passwd gives

    try:
        login = getpass.getuser()
    except Exception:  # noqa: BLE001
        login = None
    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    result = export_run(run, "bioimageio", tmp_path / "model.zip")
    with zipfile.ZipFile(result.path) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    docs = {"rdf": rdf, "onnx": open_exported(result.path, engine="onnxruntime").metadata,
            "torchscript": open_exported(result.path, engine="torch").metadata,
            "parity": json.loads(result.parity_path.read_text())}
    for name, doc in docs.items():
        for s in _strings(doc):
            assert not os.path.isabs(s) and str(tmp_path) not in s and str(synthetic_data) not in s, (name, s)
    source = docs["onnx"]["source"]
    assert source["run"] == "myrun" and source["data"] == synthetic_data.name
    assert len(source["weights_sha256"]) == 64 and len(source["dataset_sha256"]) == 64
    if login:
        assert all(a["name"] != login for a in rdf["authors"]), rdf["authors"]
    assert docs["onnx"]["postprocess"]["tuning"]["data"] == synthetic_data.name
