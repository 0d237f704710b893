"""``biomedseg suggest``: ranking unlabelled images, never training images or identical pairs."""

from __future__ import annotations

import csv
import shutil
import sys

import numpy as np
import pytest

from biomedseg.io import read_image

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from biomedseg.cli import main

    monkeypatch.setattr(sys, "argv", ["biomedseg", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def pool(synthetic_data, tmp_path_factory):
    """New synthetic images plus copies (exact, re-encoded with noise) of training images, a copy
    inside the pool and an unreadable file."""
    from PIL import Image

    from biomedseg.data.synthetic import make_synthetic_dataset

    fresh = make_synthetic_dataset(tmp_path_factory.mktemp("fresh"), n_train=6, n_test=0, size=(64, 96), seed=11)
    folder = tmp_path_factory.mktemp("pool")
    for p in sorted((fresh / "images").glob("*.png")):
        shutil.copy(p, folder / f"new_{p.name}")
    shutil.copy(folder / "new_syn_002.png", folder / "new_again.png")  # pixel-identical inside the pool
    train_ids = sorted(p.stem for p in (synthetic_data / "images").glob("*.png"))
    shutil.copy(synthetic_data / "images" / f"{train_ids[0]}.png", folder / "train_copy.png")
    noisy = read_image(synthetic_data / "images" / f"{train_ids[1]}.png").astype(np.int16)
    noisy += np.random.default_rng(0).integers(-2, 3, size=noisy.shape, dtype=np.int16)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)[..., 0]).save(folder / "train_noisy.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_suggest_skips_training_images_and_identical_pairs(
    trained_run, synthetic_data, pool, tmp_path, monkeypatch, capsys, caplog
):
    out = tmp_path / "s" / "suggest.csv"
    code, _, err = _cli(monkeypatch, capsys, "suggest", trained_run, pool, "--n", 50, "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    files = [r["file"] for r in rows]
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert not any(name in f for f in files for name in ("train_copy", "train_noisy", "broken"))
    # one of the two identical pictures, and every fresh image: 6 of them
    assert len(rows) == 6 and sum(("new_syn_002" in f) or ("new_again" in f) for f in files) == 1
    train_arrays = [read_image(p) for p in (synthetic_data / "images").glob("*.png")]
    chosen = [read_image(f) for f in files]
    for i, a in enumerate(chosen):
        assert not any(a.shape == t.shape and np.array_equal(a, t) for t in train_arrays)
        assert not any(np.array_equal(a, b) for b in chosen[i + 1 :])
    uncertainty = [float(r["uncertainty"]) for r in rows]
    assert uncertainty[0] == max(uncertainty)  # the most uncertain image comes first
    assert all(r["why"] for r in rows) and rows[1]["nearest_pick"]
    html = out.with_suffix(".html").read_text()
    assert html.count("data:image/png;base64,") == 3 * len(rows)
    assert any("broken.png" in m and "cannot read" in m for m in caplog.messages)  # reported, skipped
    assert any("--n 50: only 6" in m for m in caplog.messages)  # a shorter list, with a warning


def test_core_set_prefers_diverse_uncertain_images():
    from biomedseg.trust.suggest import greedy_core_set

    rng = np.random.default_rng(0)
    hard = rng.normal(0, 0.01, size=(5, 4)) + 10.0  # five near-copies of one hard image
    other = rng.normal(0, 1.0, size=(5, 4))
    features = np.vstack([hard, other])
    u = np.array([0.9, 0.89, 0.88, 0.87, 0.86, 0.5, 0.5, 0.5, 0.5, 0.5])
    picks = [i for i, _, _ in greedy_core_set(u, features, 4)]
    assert picks[0] == 0
    assert sum(i < 5 for i in picks) == 1  # not four copies of the hard image


@pytest.mark.parametrize("case", ["empty", "training", "n0"])
def test_bad_input_is_one_line_and_exit_2(case, trained_run, synthetic_data, tmp_path):
    import os
    import subprocess
    from pathlib import Path

    pool = tmp_path / "pool"
    pool.mkdir()
    n = 0 if case == "n0" else 5
    if case in ("training", "n0"):
        for p in sorted((synthetic_data / "images").glob("*.png"))[:3]:
            shutil.copy(p, pool / p.name)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "biomedseg.cli",
            "suggest",
            str(trained_run),
            str(pool),
            "--n",
            str(n),
            "--out",
            str(tmp_path / "s.csv"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert {"empty": "no images", "training": "nothing to suggest", "n0": "--n 0"}[case] in lines[0]
    assert not (tmp_path / "s.csv").exists()


def test_suggest_with_an_ensemble_folder(trained_run, pool, tmp_path):
    from biomedseg.runs.ensemble import write_ensemble
    from biomedseg.trust.suggest import SuggestOptions, suggest

    twin = tmp_path / "twin"
    shutil.copytree(trained_run, twin)
    ens = tmp_path / "ens"
    write_ensemble(ens, [trained_run, twin], [1.0, 1.0])
    result = suggest(ens, [pool], SuggestOptions(n=3, out=tmp_path / "e.csv", device="cpu"))
    assert len(result["rows"]) == 3 and result["features"] == "network features"
    assert all(r["member_disagreement"] == pytest.approx(0.0, abs=1e-6) for r in result["rows"])  # identical twins
    assert not any("train_" in r["file"] for r in result["rows"])
