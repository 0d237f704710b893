"""Group-aware splits keep near-duplicate groups on one side; write_split updates DATA."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from biomedseg.audit.split import stratify_labels, write_split
from biomedseg.core.errors import UserError
from biomedseg.data.group_split import read_exclude, split_with_groups


def _random_groups(rng: random.Random, ids: list[str], n_groups: int) -> list[set[str]]:
    pool = ids[:]
    rng.shuffle(pool)
    groups, k = [], 0
    for _ in range(n_groups):
        size = rng.choice([2, 2, 3, 5, 9])
        groups.append(set(pool[k : k + size]))
        k += size
    return groups


@pytest.mark.parametrize("seed", range(8))
def test_groups_stay_on_one_side(seed):
    rng = random.Random(seed)
    ids = [f"id{i:03d}" for i in range(200)]
    groups = _random_groups(rng, ids, 15)
    split = split_with_groups(ids, groups, test_fraction=0.2, val_fraction=0.1, seed=seed)
    sides = {i: side for side, members in split.items() for i in members}
    assert sorted(sides) == sorted(ids)  # every id exactly once
    assert sum(len(v) for v in split.values()) == len(ids)
    for g in groups:
        assert len({sides[i] for i in g}) == 1, f"group {sorted(g)} straddles the split"
    assert abs(len(split["test"]) - 40) <= 5 and abs(len(split["val"]) - 20) <= 5
    assert split == split_with_groups(list(reversed(ids)), groups, 0.2, 0.1, seed)  # deterministic


def test_overlapping_groups_merge_and_tiny_sets():
    split = split_with_groups(["a", "b", "c", "d", "e", "f"], [{"a", "b"}, {"b", "c"}], 0.3, 0.0, 0)
    side = {i: s for s, members in split.items() for i in members}
    assert side["a"] == side["b"] == side["c"]
    assert "test" in split and split["val"] == []
    only = split_with_groups(["a", "b", "c"], [{"a", "b", "c"}], 0.2, 0.2, 0)
    assert only["train"] == ["a", "b", "c"]  # one group: everything trains
    with pytest.raises(UserError):
        split_with_groups(["a", "b"], [], 0.6, 0.5, 0)


def test_stratified_split_spreads_a_rare_label():
    ids = [f"i{k:03d}" for k in range(300)]
    labels = {i: ("rare" if k % 15 == 0 else "common") for k, i in enumerate(ids)}
    groups = [{ids[k], ids[k + 1]} for k in range(1, 100, 7)]
    split = split_with_groups(ids, groups, 0.2, 0.1, seed=3, stratify=labels)
    rare = {side: sum(labels[i] == "rare" for i in members) for side, members in split.items()}
    assert rare["test"] == 4 and rare["val"] == 2 and rare["train"] == 14
    for g in groups:
        assert len({s for s, m in split.items() if g & set(m)}) == 1


def _audit_dict(ids, groups, conflicts, classes=None) -> dict:
    return {
        "inventory": {"pair_ids": ids},
        "duplicates": {"groups": [{"members": sorted(g)} for g in groups], "conflict_ids": conflicts},
        "masks": {"class_pixel_fraction": {"background": 0.9, "a": 0.09, "b": 0.01}, "image_classes": classes or {}},
    }


def test_write_split_updates_dataset_json_and_exclude(tmp_path):
    ids = [f"s{k:02d}" for k in range(40)]
    meta = {
        "name": "x",
        "classes": ["background", "a", "b"],
        "notes": ["keep me"],
        "split": {"train": ids[:30], "test": ids[30:]},
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    groups = [{"s01", "s02", "s03"}, {"s10", "s35"}]
    classes = {i: (["b"] if k % 10 == 0 else ["a"] if k % 2 else []) for k, i in enumerate(ids)}
    result = write_split(
        tmp_path,
        test_fraction=0.25,
        val_fraction=0.1,
        seed=1,
        stratify=True,
        audit=_audit_dict(ids, groups, ["s01", "s02"], classes),
        progress=False,
    )
    new = json.loads((tmp_path / "dataset.json").read_text())
    assert new["name"] == "x" and new["notes"] == ["keep me"] and new["classes"] == meta["classes"]
    split = new["split"]
    assert "s01" not in sum(split.values(), []) and "s02" not in sum(split.values(), [])
    side = {i: s for s, m in split.items() for i in m}
    assert side["s10"] == side["s35"]
    assert len(side) == 38 and result["excluded"] == 2
    assert read_exclude(tmp_path) == ["s01", "s02"]
    assert (tmp_path / "exclude.txt").read_text().startswith("#")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert "group-aware" in new["split_method"]
    assert stratify_labels(_audit_dict(ids, groups, [], classes))["s00"] == "b"
    # without exclusion the list is emptied, not left stale
    write_split(tmp_path, exclude_conflicts=False, audit=_audit_dict(ids, groups, ["s01", "s02"]), progress=False)
    assert read_exclude(tmp_path) == []
    assert len(sum(json.loads((tmp_path / "dataset.json").read_text())["split"].values(), [])) == 40


def test_write_split_runs_the_audit(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(10):
        img = (rng.random((48, 64)) * 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(img).resize((128, 96), Image.BICUBIC))
        mask = np.zeros((96, 128), np.uint8)
        mask[10 + 3 * k : 40 + 3 * k, 20:60] = 1
        for name, m in ((f"m{k}", mask), (f"m{k}_copy", mask if k != 3 else np.zeros_like(mask))):
            if k >= 4 and name.endswith("copy"):
                continue
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / "masks").mkdir(exist_ok=True)
            Image.fromarray(img).save(tmp_path / "images" / f"{name}.png")
            Image.fromarray(m).save(tmp_path / "masks" / f"{name}.png")
    result = write_split(tmp_path, test_fraction=0.3, val_fraction=0.2, seed=0, progress=False)
    assert result["groups"] == 4
    split = json.loads((tmp_path / "dataset.json").read_text())["split"]
    side = {i: s for s, m in split.items() for i in m}
    for k in range(3):
        assert side[f"m{k}"] == side[f"m{k}_copy"]
    assert read_exclude(tmp_path) == ["m3", "m3_copy"] and "m3" not in side


def test_write_split_refuses_a_broken_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read dataset description"):
        write_split(tmp_path, audit=_audit_dict(["a", "b"], [], []), progress=False)
    assert (tmp_path / "dataset.json").read_text() == "{not json"
