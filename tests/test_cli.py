"""The command line: user mistakes give one line naming the file, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_fake_run


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "biomedseg.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def make_data(root: Path, n=3, size=(32, 40), mask_values=(0, 1)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        m = rng.choice(np.array(mask_values, np.uint8), size)
        Image.fromarray(m).save(root / "masks" / f"im{i}.png")
    return root


def assert_user_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def train_args(data, tmp_path):
    return ["train", data, "--out", tmp_path / "run", "--epochs", "1", "--quiet"]


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "predict", "demo", "models"):
        assert cmd in r.stdout


@pytest.mark.slow
def test_missing_masks_folder(tmp_path):
    data = make_data(tmp_path / "d")
    for p in (data / "masks").iterdir():
        p.unlink()
    (data / "masks").rmdir()
    assert_user_error(run_cli(*train_args(data, tmp_path)), "masks")


@pytest.mark.slow
def test_unpaired_files(tmp_path):
    data = make_data(tmp_path / "d")
    (data / "masks" / "im1.png").unlink()
    assert_user_error(run_cli(*train_args(data, tmp_path)), "im1")


def test_corrupt_png(tmp_path):
    data = make_data(tmp_path / "d")
    raw = (data / "images" / "im2.png").read_bytes()
    (data / "images" / "im2.png").write_bytes(raw[: len(raw) // 2])
    r = run_cli(*train_args(data, tmp_path))
    assert_user_error(r, "im2.png")


@pytest.mark.slow
def test_text_file_named_png(tmp_path):
    data = make_data(tmp_path / "d")
    (data / "images" / "im0.png").write_text("hello, I am not a picture")
    assert_user_error(run_cli(*train_args(data, tmp_path)), "im0.png")


@pytest.mark.slow
def test_mask_size_differs(tmp_path):
    data = make_data(tmp_path / "d")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(data / "masks" / "im1.png")
    assert_user_error(run_cli(*train_args(data, tmp_path)), "im1.png")


@pytest.mark.slow
def test_mask_value_outside_classes(tmp_path):
    data = make_data(tmp_path / "d")
    m = np.zeros((32, 40), np.uint8)
    m[3:9, 3:9] = 1
    m[10:12, 10:12] = 7
    Image.fromarray(m).save(data / "masks" / "im2.png")
    r = run_cli(*train_args(data, tmp_path), "--set", "classes=[background, cell]")
    assert_user_error(r, "im2.png", "7")


@pytest.mark.slow
def test_empty_folder(tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    assert_user_error(run_cli(*train_args(tmp_path / "d", tmp_path)), "images")


@pytest.mark.slow
def test_missing_data_folder(tmp_path):
    assert_user_error(run_cli(*train_args(tmp_path / "nope", tmp_path)), "nope")


@pytest.mark.slow
def test_bad_option_value(tmp_path):
    data = make_data(tmp_path / "d")
    assert_user_error(run_cli(*train_args(data, tmp_path), "--model", "no-such-net"), "no-such-net")
    assert_user_error(run_cli(*train_args(data, tmp_path), "--set", "lr=abc"), "lr")
    assert_user_error(run_cli("train", data, "--out", tmp_path / "r2", "--time-budget", "ten minutes"), "ten minutes")


@pytest.mark.slow
def test_predict_on_missing_run(tmp_path):
    data = make_data(tmp_path / "d")
    r = run_cli("predict", tmp_path / "norun", data / "images", "--out", tmp_path / "o")
    assert_user_error(r, "norun")


@pytest.mark.parametrize("args", [["train", "--out"], ["predict"]])
def test_usage_errors_exit_2(args):
    r = run_cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("code", [2, 3])
def test_user_error_exit_code_is_the_errors(monkeypatch, capsys, code):
    """``main()`` exits with the error's own ``exit_code`` (2 unless a subclass says otherwise)."""
    from biomedseg import cli
    from biomedseg.core.errors import UserError

    class OtherError(UserError):
        exit_code = code

    def fail():
        raise OtherError("data/masks: no masks")

    monkeypatch.setattr(cli, "app", fail)
    monkeypatch.setattr(cli, "_setup_logging", lambda: None)  # leaves this process's logging alone
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == code
    assert capsys.readouterr().err.strip() == "error: data/masks: no masks"


@pytest.mark.slow
def test_predict_failure_reported_once(tmp_path):
    """A file that cannot be predicted is named once on stderr (logged by predict, not again by
    the CLI), and the command exits 1."""
    from biomedseg.models import create_model

    data = make_data(tmp_path / "d", n=1)
    run = write_fake_run(
        tmp_path / "run", "unet", create_model("unet", 1, 2).state_dict(), data, ["im0"], patch_size=32, batch_size=2
    )
    (data / "images" / "broken.png").write_text("not an image")
    r = run_cli("predict", run, data / "images", "--out", tmp_path / "o", "--device", "cpu", "--quiet")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "1 predicted" in r.stdout and "1 failed" in r.stdout
    mentions = [ln for ln in r.stderr.splitlines() if "broken.png" in ln]
    assert len(mentions) == 1, r.stderr
