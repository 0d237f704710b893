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
