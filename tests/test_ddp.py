"""Distributed training with torchrun: 2 CPU processes on the gloo backend."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch.distributed as dist


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_ranks_stay_in_sync_and_only_rank0_writes(synthetic_data, tmp_path):
    run = tmp_path / "ddp_run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "biomedseg.cli",
        "train",
        str(synthetic_data),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--quiet",
        "--set",
        "model_kwargs={depth: 3, base_channels: 8, num_res_units: 0}",
        "--set",
        "patch_size=64",
        "--set",
        "batch_size=2",
        "--set",
        "iterations_per_epoch=4",
        "--set",
        "num_threads=1",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((run / "ddp.json").read_text())
    assert report["world_size"] == 2
    ranks = {d["rank"]: d for d in report["ranks"]}
    assert set(ranks) == {0, 1}
    # DDP averages gradients, so both replicas end with identical parameters
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=0, abs=1e-6)
    assert ranks[0]["checkpoints_written"] >= 2 and ranks[1]["checkpoints_written"] == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 2]  # one writer: no duplicated rows
    assert (run / "checkpoints" / "best.pt").is_file()
