"""``--cpu-class`` of the speed benchmarks (benchmarks/cpu_class.py) and biomedseg's bf16 detection under it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
from cpu_class import CLASSES, cpu_fields, cpu_info  # noqa: E402

FLAGS = cpu_info()["flags"]


def _python(code: str, env_extra: dict | None = None, script: Path | None = None, args=()) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(BENCH), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    cmd = [sys.executable, str(script), *args] if script else [sys.executable, "-c", code]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif("avx2" not in FLAGS, reason="the CPU has no AVX2")
def test_no_native_bf16_under_the_avx2_class():
    code = (
        "import torch; from biomedseg.runtime.device import cpu_has_native_bf16, resolve_precision;"
        "print(torch.backends.cpu.get_cpu_capability(), cpu_has_native_bf16(),"
        " resolve_precision('auto', torch.device('cpu')))"
    )
    assert _python(code, CLASSES["avx2"]).split() == ["AVX2", "False", "fp32"]


@pytest.mark.skipif("avx512_bf16" not in FLAGS, reason="the CPU has no native bf16")
def test_native_bf16_is_reported_where_the_cpu_has_it_and_nothing_limits_it():
    code = "from biomedseg.runtime.device import cpu_has_native_bf16; print(cpu_has_native_bf16())"
    assert _python(code) == "True"
    assert _python(code, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}) == "False"  # the avx512 class


@pytest.mark.slow  # two torch start-ups
@pytest.mark.skipif("avx2" not in FLAGS, reason="the CPU has no AVX2")
def test_the_class_is_set_before_torch_or_by_re_executing(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(
        "import sys\n"
        "import torch\n"
        "from cpu_class import apply_cpu_class, measured_class\n"
        "apply_cpu_class(sys.argv[1])\n"
        "import torch\n"
        "print(measured_class(), torch.backends.cpu.get_cpu_capability())\n"
    )
    assert _python("", script=script, args=["avx2"]) == "avx2 AVX2"  # torch came first: re-executed


def test_cpu_fields_name_the_model_and_the_bf16_flags():
    line = cpu_fields({"model": "Some CPU 9", "flags": {"avx2", "avx512_vnni"}})
    assert line == " cpu=Some_CPU_9 avx512_bf16=absent amx_bf16=absent avx512_vnni=present"
