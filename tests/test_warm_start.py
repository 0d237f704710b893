"""``train --init``: weights carried into new classes and channels, lineage, the plan, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from biomedseg.models import create_model
from biomedseg.models.adapt import adapt_state_dict, match_classes, varying_dims
from biomedseg.models.pretrained import sha256_of as file_sha256
from conftest import TINY

KW = {"depth": 3, "base_channels": 8, "num_res_units": 1}


def _build(c, k):
    return create_model("unet", c, k, **KW)


def _adapt(src_model, fresh_model, src_classes, classes, channels=(1, 1)):
    dims = varying_dims(_build, channels[1], len(classes))
    pairs = match_classes(src_classes, classes)
    sizes = {"classes": (len(src_classes), len(classes)), "channels": channels}
    return adapt_state_dict(src_model.state_dict(), fresh_model.state_dict(), dims, pairs, sizes, "src.pt"), dims


def test_same_classes_copy_every_tensor_bit_for_bit():
    torch.manual_seed(0)
    src, fresh = _build(1, 3), _build(1, 3)
    state, _ = _adapt(src, fresh, ["bg", "a", "b"], ["bg", "a", "b"])
    for key, value in src.state_dict().items():
        assert torch.equal(state[key], value), key


def test_kept_classes_bit_identical_new_class_fresh_dropped_class_gone():
    torch.manual_seed(0)
    src, fresh = _build(1, 3), _build(1, 3)
    # source: background, cell, filament; target: background, Cell, nucleus (renamed case, one new, one gone)
    state, (class_dims, _) = _adapt(src, fresh, ["background", "cell", "filament"], ["background", "Cell", "nucleus"])
    changed = [k for k, d in class_dims.items() if d]
    assert changed, "the output layers must be found as class-indexed"
    s, f = src.state_dict(), fresh.state_dict()
    for key, value in state.items():
        dims = class_dims[key]
        if not dims:
            assert torch.equal(value, s[key]), key
            continue
        kept = np.ix_(*[np.arange(2) if d in dims else np.arange(n) for d, n in enumerate(value.shape)])
        assert torch.equal(value[kept], s[key][kept]), key  # background and cell: the source's bits
        for d in dims:  # nucleus: the fresh initialisation along every class dimension
            assert torch.equal(value.index_select(d, torch.tensor([2])), f[key].index_select(d, torch.tensor([2])))
    net = _build(1, 3)
    net.load_state_dict(state)  # a loadable state dict of the new shape


def test_added_class_changes_output_shape_and_keeps_old_ones():
    torch.manual_seed(1)
    src, fresh = _build(1, 2), _build(1, 3)
    state, (class_dims, _) = _adapt(src, fresh, ["background", "cell"], ["background", "cell", "filament"])
    net = _build(1, 3)
    net.load_state_dict(state)
    s = src.state_dict()
    for key in (k for k, d in class_dims.items() if d):
        ix = [torch.arange(2) if d in class_dims[key] else torch.arange(n) for d, n in enumerate(state[key].shape)]
        assert torch.equal(state[key][np.ix_(*[i.numpy() for i in ix])], s[key]), key


def test_grey_to_rgb_first_layer_repeated_over_channels():
    torch.manual_seed(2)
    src, fresh = _build(1, 2), _build(3, 2)
    state, (_, channel_dims) = _adapt(src, fresh, ["bg", "fg"], ["bg", "fg"], channels=(1, 3))
    first = [k for k, d in channel_dims.items() if d]
    assert first
    for key in first:
        d = channel_dims[key][0]
        expected = src.state_dict()[key].repeat_interleave(3, dim=d) / 3
        torch.testing.assert_close(state[key], expected)
    # a grey image given as RGB gets the same logits from the adapted network as the grey one did
    net = _build(3, 2).eval()
    net.load_state_dict(state)
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(net(x.repeat(1, 3, 1, 1)), src.eval()(x), atol=1e-5, rtol=1e-4)


def test_three_to_four_channels_refused():
    from biomedseg.core.errors import UserError

    with pytest.raises(UserError, match="input channels"):
        _adapt(_build(3, 2), _build(4, 2), ["bg", "fg"], ["bg", "fg"], channels=(3, 4))


def _two_class(src: Path, dst: Path) -> Path:
    """The synthetic data with the filament class merged into the background."""
    shutil.copytree(src / "images", dst / "images")
    (dst / "masks").mkdir(parents=True)
    for p in sorted((src / "masks").glob("*.png")):
        m = np.array(Image.open(p))
        Image.fromarray(np.where(m == 1, 1, 0).astype(np.uint8)).save(dst / "masks" / p.name)
    meta = json.loads((src / "dataset.json").read_text())
    meta["classes"] = ["background", "cell"]
    meta.pop("class_fractions", None)
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_adding_a_class_starts_the_shared_class_where_the_source_left_it(synthetic_data, tmp_path):
    from biomedseg.training.api import train

    two = _two_class(synthetic_data, tmp_path / "two")
    source = train(two, tmp_path / "src", epochs=6, seed=0, quiet=True, **TINY)
    src_cell = max(float(r["val_dice_cell"]) for r in _rows(source))
    child = train(
        synthetic_data,
        tmp_path / "child",
        epochs=8,  # the thin new class needs a few epochs of this tiny net to move (4 left it flat)
        seed=0,
        quiet=True,
        init=source,
        **{k: v for k, v in TINY.items() if k != "model_kwargs"},
    )
    rows = _rows(child)
    assert abs(float(rows[0]["val_dice_cell"]) - src_cell) <= 0.05, (rows[0]["val_dice_cell"], src_cell)
    filament = [float(r["val_dice_filament"]) for r in rows]
    assert filament[-1] > filament[0] > 0  # the new class is being learnt
    info = json.loads((child / "run.json").read_text())
    assert info["parent"]["sha256"] == file_sha256(source / "checkpoints" / "best.pt")
    assert info["parent"]["run"] == "src"
    plan = yaml.safe_load((child / "plan.yaml").read_text())
    assert plan["init_classes"]["value"] == ["background", "cell"]
    assert "filament" in plan["init_classes"]["reason"]
    src_cfg = yaml.safe_load((source / "config.yaml").read_text())
    cfg = yaml.safe_load((child / "config.yaml").read_text())
    assert cfg["model_kwargs"] == src_cfg["model_kwargs"] and plan["model_kwargs.base_channels"]["reason"].startswith(
        "kept from the --init run"
    )
    assert cfg["lr"] == pytest.approx(src_cfg["lr"] * 0.2)


def _cli(*args):
    r = subprocess.run(
        [sys.executable, "-m", "biomedseg.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    r.output, r.exit_code = r.stdout + r.stderr, r.returncode
    return r


def test_init_bad_sources_are_one_line_errors(synthetic_data, trained_run, tmp_path):
    cases = []
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    cases.append((not_a_run, "not a biomedseg run folder"))
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"\0")
    cases.append((exported, "exported file"))
    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    for ckpt in (broken / "checkpoints").glob("*.pt"):
        ckpt.write_bytes(b"not a checkpoint")
    cases.append((broken, "cannot load checkpoint"))
    for source, message in cases:
        out = tmp_path / f"out_{source.name}"
        r = _cli("train", synthetic_data, "--out", out, "--epochs", "1", "--init", source)
        assert r.exit_code == 2, r.output
        assert message in r.output and "Traceback" not in r.output
        assert not (out / "run.json").exists() and not (out / "checkpoints").exists()


def test_init_refuses_another_architecture_and_resume_together(synthetic_data, trained_run, tmp_path):
    r = _cli(
        "train", synthetic_data, "--out", tmp_path / "a", "--epochs", "1", "--init", trained_run, "--model", "segnet"
    )
    assert r.exit_code == 2 and "cannot start a segnet" in r.output
    r = _cli("train", synthetic_data, "--out", tmp_path / "b", "--epochs", "1", "--init", trained_run, "--resume")
    assert r.exit_code == 2 and "use one of them" in r.output


def test_compare_shows_the_parent_of_a_fine_tune(trained_run, tmp_path):
    from types import SimpleNamespace

    from biomedseg.runs import RunFolder
    from biomedseg.workflows.comparison import lineage_rows

    child = tmp_path / "child"
    shutil.copytree(trained_run, child)
    info = json.loads((child / "run.json").read_text())
    info["parent"] = {
        "run": trained_run.name,
        "path": str(Path(trained_run).resolve()),
        "checkpoint": "best.pt",
        "sha256": "ab" * 32,
        "origin": "run",
    }
    (child / "run.json").write_text(json.dumps(info))
    members = [
        SimpleNamespace(run=RunFolder(trained_run), name="parent"),
        SimpleNamespace(run=RunFolder(child), name="child"),
    ]
    assert lineage_rows(members) == [("started from (--init)", [None, "parent (compared here)"])]
    assert lineage_rows(members[:1]) == []
