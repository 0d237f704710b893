"""Integration on real data in ../shared/datasets (skipped with a reason when absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biomedseg.io import read_image, read_mask
from biomedseg.io.masks import Palette
from biomedseg.training.api import train
from biomedseg.workflows.evaluation import evaluate
from conftest import shared_dataset
from test_planner import assert_reasons_cite_their_inputs

pytestmark = pytest.mark.shared


def otsu_membrane_dice(data, ids) -> float:
    """Dice of the membrane class (0) from a global Otsu threshold per image (dark = membrane)."""
    from skimage.filters import threshold_otsu

    tp = fp = fn = 0
    for i in ids:
        img = read_image(data / "images" / f"{i}.png")[..., 0]
        truth = read_mask(data / "masks" / f"{i}.png", Palette.identity(2))[0] == 0
        pred = img < threshold_otsu(img)
        tp += np.sum(pred & truth)
        fp += np.sum(pred & ~truth)
        fn += np.sum(~pred & truth)
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.slow
def test_isbi_short_training_beats_otsu(tmp_path):
    data = shared_dataset("isbi2012_em")
    test_ids = json.loads((data / "dataset.json").read_text())["split"]["test"]
    # a fixed number of steps (not a wall-clock budget): the same training on a fast or a busy machine
    run = train(
        data,
        tmp_path / "run",
        epochs=2,
        iterations_per_epoch=20,
        seed=0,
        quiet=True,
        num_threads=2,
        model_kwargs={"depth": 4, "base_channels": 16, "num_res_units": 1},
        patch_size=256,
        batch_size=4,
    )
    m = evaluate(run, data, tmp_path / "eval", split="test", overlays=False, quiet=True)
    assert m["n_images"] == len(test_ids) == 6
    baseline = otsu_membrane_dice(data, test_ids)
    membrane = m["per_class"]["membrane"]["dice"]
    assert 0.4 < baseline < 0.65  # sanity of the baseline itself (about 0.53)
    assert membrane > baseline + 0.05, (membrane, baseline)


def test_audit_class_shares_match_dataset_json(tmp_path):
    """The audit's class pixel shares equal the dataset's published fractions to 3 decimals."""
    from biomedseg.reports.audit.page import audit_with_report

    for name in ("isbi2012_em", "dsb2018_nuclei"):
        data = shared_dataset(name)
        expected = json.loads((data / "dataset.json").read_text())["class_pixel_fraction"]
        result = audit_with_report(data, tmp_path / name, progress=False)
        shares = result["masks"]["class_pixel_fraction"]
        assert set(shares) == set(expected)
        for cls, value in expected.items():
            assert abs(shares[cls] - value) < 5e-4, (name, cls, shares[cls], value)
        assert (tmp_path / name / "audit.html").is_file()


SHARED_NAMES = ["isbi2012_em", "drive_retina", "darkfield_bacteria", "dsb2018_nuclei", "monuseg_histology"]
PLANNED = {
    "patch_size",
    "model_kwargs.depth",
    "model_kwargs.base_channels",
    "batch_size",
    "normalization",
    "class_weights",
    "fg_oversample",
    "augment",
    "loss",
    "optimizer",
    "lr",
    "schedule",
    "iterations",
}


@pytest.mark.slow  # plan measures the step time by training a few steps
@pytest.mark.parametrize("name", SHARED_NAMES)
def test_plan_command_gives_every_value_a_reason(name, tmp_path):
    """``biomedseg plan DATA --time-budget 30m`` on each shared dataset: a plan.yaml whose every
    choice the issue lists is there, with a one-line reason."""
    import yaml
    from typer.testing import CliRunner

    from biomedseg.cli import app

    data = shared_dataset(name)
    res = CliRunner().invoke(
        app, ["plan", str(data), "--out", str(tmp_path / "plan.yaml"), "--time-budget", "30m", "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    plan = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    entries = {k: v for k, v in plan.items() if isinstance(v, dict) and "value" in v}
    assert PLANNED <= set(entries), PLANNED - set(entries)
    assert_reasons_cite_their_inputs(plan, plan["fingerprint"], 1800)
    assert plan["fingerprint"]["n_images"] > 0
    assert entries["normalization"]["value"] == ("clip_zscore" if plan["fingerprint"]["bit_depth"] == 16 else "zscore")
    assert entries["iterations"]["value"] > 0 and "measured" in entries["model_kwargs.base_channels"]["reason"]
