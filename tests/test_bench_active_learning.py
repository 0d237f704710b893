"""The pure helpers of benchmarks/active_learning.py: round sizes, seeded picks, the symlink farm and
the verdict (the benchmark itself trains 28 runs; its ``--smoke`` mode takes ~2 minutes, too long here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import active_learning as al  # noqa: E402


def _data(root: Path, n: int = 8) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = [f"img{i:02d}" for i in range(n)]
    rng = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8)).save(root / "masks" / f"{i}.png")
    split = {"train": ids[: n - 2], "test": ids[n - 2 :]}
    (root / "dataset.json").write_text(json.dumps({"name": "toy", "classes": ["bg", "fg"], "split": split}))
    return root


def test_step_count_rounds_and_keeps_at_least_one():
    assert al.step_count(240, 0.1) == 24
    assert al.step_count(52, 0.1) == 5
    assert al.step_count(3, 0.1) == 1
    with pytest.raises(ValueError):
        al.step_count(10, 1.0)


def test_initial_ids_are_seeded_sorted_and_order_free():
    ids = [f"x{i}" for i in range(50)]
    a = al.initial_ids(ids, 5, 0)
    assert a == al.initial_ids(list(reversed(ids)), 5, 0)
    assert a == sorted(a) and len(set(a)) == 5 and set(a) <= set(ids)
    assert any(al.initial_ids(ids, 5, s) != a for s in range(1, 4))


def test_random_ids_differ_by_seed_and_round_and_stay_in_pool():
    pool = [f"p{i}" for i in range(40)]
    picks = {(s, r): al.random_ids(pool, 4, s, r) for s in range(3) for r in range(1, 4)}
    assert all(set(p) <= set(pool) and len(set(p)) == 4 for p in picks.values())
    assert len({tuple(p) for p in picks.values()}) > 1
    assert picks[(1, 2)] == al.random_ids(list(reversed(pool)), 4, 1, 2)
    assert al.random_ids(pool[:2], 4, 0, 1) == sorted(pool[:2])


def test_labelled_farm_links_only_the_given_ids(tmp_path):
    from biomedseg.data.discovery import find_pairs
    from biomedseg.trust.suggest import _data_images

    data = _data(tmp_path / "data")
    farm = al.labelled_farm(data, ["img01", "img03"], tmp_path / "farm")
    links = sorted((farm / "images").iterdir()) + sorted((farm / "masks").iterdir())
    assert all(p.is_symlink() for p in links) and len(links) == 4
    assert (farm / "images" / "img01.png").resolve() == (data / "images" / "img01.png").resolve()
    assert [s.id for s in find_pairs(farm / "images", farm / "masks")] == ["img01", "img03"]
    assert json.loads((farm / "dataset.json").read_text())["split"] == {"train": ["img01", "img03"]}
    # what `suggest --exclude` skips: the farm's images, not the rest of the data set
    assert sorted(p.name for p in _data_images(farm)) == ["img01.png", "img03.png"]
    assert al.training_ids(data) == [f"img{i:02d}" for i in range(6)]
    with pytest.raises(ValueError, match="img99"):
        al.labelled_farm(data, ["img99"], tmp_path / "farm2")


def test_verdict_counts_rounds_ahead_of_the_random_mean():
    res = {
        "fractions": [0.1, 0.2, 0.3, 0.4],
        "suggest": [0.5, 0.70, 0.68, 0.795],
        "random": {0: [0.5, 0.60, 0.70, 0.70], 1: [0.5, 0.62, 0.72, 0.72], 2: [0.5, 0.64, 0.65, 0.74]},
        "full": 0.80,
    }
    v = al.verdict(res)
    assert (v["rounds_ahead"], v["rounds"], v["ahead_every_round"], v["within_full"]) == (2, 3, False, True)
    res["suggest"][2] = 0.71
    res["full"] = 0.81
    v = al.verdict(res)
    assert v["ahead_every_round"] and not v["within_full"]


def test_budget_is_seconds_or_a_fixed_number_of_steps(tmp_path):
    assert al.train_budget(45.0, None) == {"time_budget": 45.0}
    assert al.train_budget(45.0, 120) == {"epochs": 1, "iterations_per_epoch": 120}
    (tmp_path / "metrics.csv").write_text("epoch,iteration,val_dice\n1,23,0.5\n2,41,0.6\n")
    assert al.steps_trained(tmp_path) == 41
