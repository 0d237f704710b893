"""The paired bootstrap (biomedseg.core.stats) and `biomedseg compare` on tiny synthetic runs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from biomedseg.core.errors import UserError
from biomedseg.core.stats import difference_sentence, paired_bootstrap, verdict
from biomedseg.runs import RunFolder
from conftest import TINY
from test_cli import assert_user_error, run_cli

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run_format_v1" / "run"


# ------------------------------------------------------------------------------ the statistics
def _scores(rng, n=40, shift=0.02, noise=0.01):
    a = rng.uniform(0.6, 0.9, n)
    return a, a + shift + rng.normal(0.0, noise, n)


def test_bootstrap_interval_covers_a_known_difference():
    a, b = _scores(np.random.default_rng(3))
    r = paired_bootstrap(a, b, n_resamples=5000, seed=0)
    assert r["n"] == 40 and r["n_resamples"] == 5000 and r["confidence"] == 0.95
    assert r["low"] < 0.02 < r["high"]
    assert r["low"] > 0  # 0.02 against noise of 0.01 per image: clearly detected
    assert r["mean_difference"] == pytest.approx(float(np.mean(b - a)))
    assert r["p_value"] < 0.05 and verdict(r) == "b"
    swapped = paired_bootstrap(b, a, n_resamples=5000, seed=0)
    assert swapped["high"] < 0 and verdict(swapped) == "a"


def _coverage(n: int, trials: int = 200) -> float:
    """Share of ``trials`` synthetic test sets of ``n`` images whose 95% interval holds the true
    mean difference (0.01; skewed per-image noise, as Dice differences often are)."""
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(trials):
        a = rng.uniform(0.6, 0.9, n)
        b = a + 0.01 + 0.03 * (rng.exponential(1.0, n) - 1.0)
        r = paired_bootstrap(a, b, n_resamples=1000, seed=k)
        hits += r["low"] <= 0.01 <= r["high"]
    return hits / trials


def test_bootstrap_interval_covers_the_true_difference_in_most_samples():
    """Honesty: over many synthetic test sets of 30 images, the 95% BCa interval holds the true mean
    difference in about 95% of them."""
    assert 0.90 <= _coverage(30) <= 0.99


def test_identical_runs_give_an_interval_around_zero():
    a = np.random.default_rng(1).uniform(0.5, 0.9, 12)
    r = paired_bootstrap(a, a.copy())
    assert r["low"] == r["high"] == r["mean_difference"] == 0.0
    assert r["p_value"] == 1.0 and verdict(r) == "none"
    assert difference_sentence(r, "A", "B") == "no difference between A and B: the same Dice on each of the 12 images"
    noisy = paired_bootstrap(a, a + np.random.default_rng(2).normal(0, 0.02, 12))
    assert noisy["low"] <= 0 <= noisy["high"]


def test_bootstrap_is_reproducible_and_same_indices_for_both_runs():
    from scipy import stats

    a, b = _scores(np.random.default_rng(5))
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7)["low"] != paired_bootstrap(a, b, seed=8)["low"]
    # resampling pairs of images = resampling their differences: SciPy's one-sample BCa bootstrap of
    # b - a with the same random stream gives the same interval
    r = paired_bootstrap(a, b, n_resamples=300, seed=4, confidence=0.9)
    one = stats.bootstrap(
        (b - a,), np.mean, n_resamples=300, confidence_level=0.9, method="BCa", rng=np.random.default_rng(4)
    )
    assert r["method"] == "BCa"
    assert r["low"] == pytest.approx(one.confidence_interval.low)
    assert r["high"] == pytest.approx(one.confidence_interval.high)


def test_one_image_gives_a_point_interval():
    r = paired_bootstrap([0.5], [0.7])
    assert r["low"] == r["high"] == r["mean_difference"] == pytest.approx(0.2)


@pytest.mark.parametrize("a, b", [([0.5, 0.6], [0.5]), ([], []), ([0.5, np.nan], [0.5, 0.6]), ([[0.5]], [[0.5]])])
def test_bootstrap_refuses_unpaired_or_missing_scores(a, b):
    with pytest.raises(ValueError):
        paired_bootstrap(a, b)


def test_sentences():
    base = {"n": 40, "confidence": 0.95}
    better = {**base, "mean_difference": 0.012, "low": 0.004, "high": 0.020}
    assert (
        difference_sentence(better, "A", "B") == "B is better than A by 0.012 Dice (95% CI 0.004 to 0.020, 40 images)"
    )
    worse = {**base, "mean_difference": -0.012, "low": -0.020, "high": -0.004}
    assert difference_sentence(worse, "A", "B") == "A is better than B by 0.012 Dice (95% CI 0.004 to 0.020, 40 images)"
    none = {**base, "mean_difference": 0.003, "low": -0.006, "high": 0.011, "n": 4}
    assert difference_sentence(none, "A", "B") == (
        "no detectable difference between A and B: B - A = +0.003 Dice "
        "(95% CI -0.006 to +0.011, 4 images, too few for a reliable interval)"
    )


# ------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def second_run(synthetic_data, tmp_path_factory) -> Path:
    """The same settings as ``trained_run`` but another seed (and one more epoch)."""
    from biomedseg.training.api import train

    out = tmp_path_factory.mktemp("runs") / "other"
    return train(synthetic_data, out, epochs=3, seed=1, quiet=True, **TINY)


def _per_image(eval_dir: Path) -> dict[str, float]:
    with open(eval_dir / "per_image.csv", newline="") as fh:
        return {r["id"]: float(r["image_dice"]) for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_compare_two_runs_writes_the_report_and_says_what_the_bootstrap_says(
    trained_run, second_run, synthetic_data, tmp_path
):
    from biomedseg.workflows.comparison import compare

    out = tmp_path / "cmp"
    s = compare(
        [trained_run, second_run],
        out,
        data=synthetic_data,
        split="test",
        n_resamples=2000,
        seed=3,
        device="cpu",
        quiet=True,
    )
    assert s["n_images"] == 4 and s["baseline"] == "run" and [r["name"] for r in s["runs"]] == ["run", "other"]
    (c,) = s["comparisons"]
    # the interval is the bootstrap of the evaluations' per-image Dice
    a, b = _per_image(out / "evals" / "run"), _per_image(out / "evals" / "other")
    ids = sorted(a)
    want = paired_bootstrap([a[i] for i in ids], [b[i] for i in ids], n_resamples=2000, seed=3)
    assert c["low"] == pytest.approx(want["low"]) and c["high"] == pytest.approx(want["high"])
    assert c["mean_difference"] == pytest.approx(want["mean_difference"])
    sentence = difference_sentence(want, "run", "other")
    assert c["sentence"] == sentence
    md = (out / "compare.md").read_text()
    page = (out / "compare.html").read_text()
    for text in (md, page):
        for section in ("Significance", "Settings that differ", "Metrics", "Training curves", "Per-image Dice"):
            assert section in text, section
        assert "95% CI" in text and "Dice: cell" in text and "training time (s)" in text
    assert sentence in md and sentence.replace("'", "&#x27;") in page
    assert re.search(r"\| seed \| 0 \| 1 \|", md) and re.search(r"\| epochs \| 2 \| 3 \|", md)
    for i in ids:
        assert f"| {i} | {a[i]:.4f} | {b[i]:.4f} |" in md
    assert (out / "training_curves.png").is_file() and (out / "per_image_dice.png").is_file()
    assert page.count("data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "http" not in page  # opens offline, alone
    assert json.loads((out / "compare.json").read_text())["comparisons"][0]["sentence"] == sentence


@pytest.mark.slow
def test_compare_reuses_current_evaluations_and_takes_given_ones(trained_run, second_run, synthetic_data, tmp_path):
    from biomedseg.workflows.comparison import compare
    from biomedseg.workflows.evaluation import evaluate

    given = tmp_path / "eval_other"
    evaluate(second_run, synthetic_data, out=given, split="test", overlays=False, quiet=True, device="cpu")
    out = tmp_path / "cmp"
    kw = {"data": synthetic_data, "n_resamples": 200, "device": "cpu", "quiet": True}
    s = compare([trained_run, second_run], out, evaluations={second_run: given}, **kw)
    assert s["runs"][1]["evaluation"] == str(given) and not (out / "evals" / "other").exists()
    written = (out / "evals" / "run" / "metrics.json").stat().st_mtime_ns
    s2 = compare([trained_run, second_run], out, evaluations={"other": given}, baseline="other", **kw)
    assert (out / "evals" / "run" / "metrics.json").stat().st_mtime_ns == written  # reused, not re-evaluated
    assert s2["comparisons"][0]["a"] == "other" and s2["comparisons"][0]["b"] == "run"
    assert s2["comparisons"][0]["mean_difference"] == pytest.approx(-s["comparisons"][0]["mean_difference"])
    os.utime(out / "evals" / "run" / "metrics.json", (0, 0))  # older than the checkpoint: evaluated again
    compare([trained_run, second_run], out, evaluations={"other": given}, **kw)
    assert (out / "evals" / "run" / "metrics.json").stat().st_mtime > 0
    with pytest.raises(UserError, match="not one of the runs compared"):
        compare([trained_run, second_run], out, baseline="nope", **kw)


@pytest.mark.slow
def test_compare_refuses_evaluations_on_different_images(trained_run, second_run, synthetic_data, tmp_path):
    from biomedseg.workflows.comparison import compare
    from biomedseg.workflows.evaluation import evaluate

    ev = tmp_path / "eval_other"
    evaluate(second_run, synthetic_data, out=ev, split="test", overlays=False, quiet=True, device="cpu")
    lines = (ev / "per_image.csv").read_text().splitlines()
    (ev / "per_image.csv").write_text("\n".join(lines[:-1]) + "\n")  # one image fewer
    with pytest.raises(UserError, match=r"3 images.*4 \(3 in common\)"):
        compare(
            [trained_run, second_run],
            tmp_path / "cmp",
            data=synthetic_data,
            evaluations={second_run: ev},
            n_resamples=100,
            device="cpu",
            quiet=True,
        )
    with pytest.raises(UserError, match="split"):
        compare(
            [trained_run, second_run],
            tmp_path / "cmp",
            data=synthetic_data,
            split="val",
            evaluations={second_run: ev},
            n_resamples=100,
            device="cpu",
            quiet=True,
        )


def test_differing_settings_are_flattened_and_only_the_differences():
    from biomedseg.workflows.comparison import differing_settings

    rows = differing_settings(
        [
            {"lr": 0.01, "model_kwargs": {"depth": 3, "base": 8}, "seed": 0},
            {"lr": 0.01, "model_kwargs": {"depth": 4, "base": 8}, "seed": 0, "extra": [1, 2]},
        ]
    )
    assert rows == [("model_kwargs.depth", [3, 4]), ("extra", [None, "[1, 2]"])]


# ----------------------------------------------------------------------------------- the CLI
def _run_with_classes(tmp_path: Path, classes: list[str]) -> Path:
    run = tmp_path / "other_classes"
    shutil.copytree(FIXTURE_RUN, run)
    path = RunFolder(run).paths.dataset
    info = json.loads(path.read_text())
    info["classes"] = classes
    path.write_text(json.dumps(info))
    return run


@pytest.mark.slow
def test_cli_refuses_in_one_line(tmp_path):
    out = tmp_path / "cmp"
    assert_user_error(run_cli("compare", FIXTURE_RUN, "--out", out), "at least 2 run folders, got 1")
    assert_user_error(run_cli("compare", "--out", out), "at least 2 run folders, got 0")
    assert_user_error(run_cli("compare", FIXTURE_RUN, tmp_path, "--out", out), "not a biomedseg run folder")
    other = _run_with_classes(tmp_path, ["background", "nucleus", "filament"])
    assert_user_error(run_cli("compare", FIXTURE_RUN, other, "--out", out), "other_classes", "classes", "differ")
    assert_user_error(run_cli("compare", FIXTURE_RUN, FIXTURE_RUN, "--out", out), "given twice")
    assert_user_error(run_cli("compare", FIXTURE_RUN, tmp_path / "missing", "--out", out), "no such run folder")
    assert_user_error(run_cli("compare", FIXTURE_RUN, other, "--out", out, "--eval", "x"), "RUN=EVALDIR")
    assert not out.exists()
