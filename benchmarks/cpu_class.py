"""The CPU a speed benchmark ran on, and ``--cpu-class``: measuring an older CPU class on a newer one.

One helper for every benchmark's RESULT line (the CPU model and its bf16/AMX/VNNI flags) and for
the ``--cpu-class`` option of the speed benchmarks (predict_throughput, train_throughput,
channels_last_cpu, loader_throughput):

- ``native``: whatever the machine has (PyTorch's and oneDNN's own choice);
- ``avx2``: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``: PyTorch's kernels and oneDNN
  behave as on an AVX2-only CPU (no AVX-512, no native bf16: most lab workstations and laptops);
- ``avx512``: AVX-512 without its bf16 instructions (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``);
- ``avx512_bf16``: AVX-512 with native bf16, without AMX (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``).

Both variables are read once, when PyTorch starts, so :func:`apply_cpu_class` sets them before
``torch`` is imported, or re-executes the script with them when it already is. The class actually
measured comes from ``torch.backends.cpu.get_cpu_capability()`` and biomedseg's own bf16 detection
(:func:`measured_class`), so a RESULT line names what ran, not what was asked for.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: class -> environment that makes PyTorch (ATen) and oneDNN use only that class's instructions
CLASSES: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
    "avx512_bf16": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
}
#: the CPU flags a class needs (it can only be measured on a CPU that has them)
NEEDS = {"native": (), "avx2": ("avx2",), "avx512": ("avx512f",), "avx512_bf16": ("avx512_bf16",)}
#: flags the RESULT lines report
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
_REEXEC = "BIOMEDSEG_CPU_CLASS_REEXEC"


def cpu_info() -> dict:
    """``{"model": lscpu's model name, "flags": set of CPU flags}`` (``/proc/cpuinfo`` when there is no lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    info = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in text.splitlines() if ":" in ln)}
    flags = set(info.get("Flags", "").split())
    if not flags:
        try:
            with open("/proc/cpuinfo") as f:
                lines = f.read().splitlines()
            flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
        except OSError:
            pass
    return {"model": " ".join(info.get("Model name", "unknown").split()), "flags": flags}


def cpu_fields(info: dict | None = None) -> str:
    """`` cpu=<model> avx512_bf16=present|absent amx_bf16=... avx512_vnni=...`` for a RESULT line."""
    info = info or cpu_info()
    name = "_".join(info["model"].split())
    return f" cpu={name} " + " ".join(
        f"{f}={'present' if f in info['flags'] else 'absent'}" for f in ("avx512_bf16", "amx_bf16", "avx512_vnni")
    )


def add_option(parser) -> None:
    """``--cpu-class {native,avx2,avx512,avx512_bf16}`` (default: the environment as it is)."""
    parser.add_argument(
        "--cpu-class",
        choices=sorted(CLASSES),
        default=None,
        help="measure as on this CPU class (sets ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA before torch starts; "
        "default: the environment as it is)",
    )


def _wanted_env(name: str) -> dict[str, str | None]:
    return {v: CLASSES[name].get(v) for v in _VARS}


def apply_cpu_class(name: str | None, flags: set[str] | None = None) -> None:
    """Make this process measure CPU class ``name`` (``None``: leave the environment alone).

    Sets the variables when ``torch`` is not imported yet; otherwise re-executes the running script
    (``sys.argv``) with them, once. A class needing flags this CPU lacks is refused (``SystemExit``)."""
    if name is None:
        return
    missing = [f for f in NEEDS[name] if f not in (flags if flags is not None else cpu_info()["flags"])]
    if missing:
        raise SystemExit(f"--cpu-class {name}: this CPU lacks {', '.join(missing)}")
    wanted = _wanted_env(name)
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    for k, v in wanted.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if "torch" not in sys.modules:
        return
    if os.environ.get(_REEXEC):
        raise SystemExit(f"--cpu-class {name}: torch was imported before the class could be set")
    os.environ[_REEXEC] = "1"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *sys.argv])


def measured_class() -> str:
    """The class the running PyTorch measures: ``avx2`` (or lower), ``avx512``, ``avx512_bf16`` or
    ``amx``, from ``torch.backends.cpu.get_cpu_capability()``, ``ONEDNN_MAX_CPU_ISA`` and
    biomedseg's bf16 detection (:func:`biomedseg.runtime.device.cpu_has_native_bf16`)."""
    import torch

    from biomedseg.runtime.device import cpu_has_native_bf16

    capability = torch.backends.cpu.get_cpu_capability().lower()
    if not capability.startswith(("avx512", "amx")):
        return capability.replace(" ", "_")
    if not cpu_has_native_bf16():
        return "avx512"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    amx = "amx_bf16" in cpu_info()["flags"] and (not isa or "AMX" in isa or isa in ("ALL", "DEFAULT"))
    return "amx" if amx else "avx512_bf16"


def class_fields(requested: str | None) -> str:
    """`` cpu_class=<measured> (requested <name>|environment) capability=<ATen's>`` plus :func:`cpu_fields`."""
    import torch

    asked = requested or "environment"
    env = ",".join(f"{k}={os.environ[k]}" for k in _VARS if k in os.environ) or "none"
    return (
        f" cpu_class={measured_class()} requested={asked} capability={torch.backends.cpu.get_cpu_capability()}"
        f" isa_env={env}" + cpu_fields()
    )
