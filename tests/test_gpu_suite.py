"""benchmarks/gpu_suite.sh runs end to end on the CPU with --dry-run (so it is ready when a GPU is)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_suite_dry_run_gives_every_result_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    log = tmp_path / "suite.log"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--log", str(log)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    results = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT gpu_suite")]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [ln.split()[2] for ln in results] == ["step=train", "step=data", "step=predict", "step=isbi"]
    assert all("DRY_RUN" in ln and "failed" not in ln for ln in results), results
    assert log.read_text().count("RESULT gpu_suite") == 4  # --log keeps a copy
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
