"""Device, precision and thread choices for training and inference."""

from __future__ import annotations

import os

import torch

from biomedseg.core.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch (install a CUDA build of torch, see README)")
    return torch.device(name)


#: ``ONEDNN_MAX_CPU_ISA`` values that keep oneDNN below its bf16 instructions (AVX512_CORE_BF16 and up)
_ONEDNN_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bfloat16 dot products natively (AVX512_BF16 or AMX) and PyTorch
    may use them: not when ``ATEN_CPU_CAPABILITY`` (``torch.backends.cpu.get_cpu_capability()``)
    is below AVX-512 or ``ONEDNN_MAX_CPU_ISA`` is below AVX512_CORE_BF16, which is how an AVX2-class
    CPU is stood in for on a newer one (``benchmarks/cpu_class.py``)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    if not ("avx512_bf16" in flags or "amx_bf16" in flags):
        return False
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_ISA_WITHOUT_BF16:
        return False
    return torch.backends.cpu.get_cpu_capability().upper().startswith(("AVX512", "AMX"))


def cpp_compiler_available() -> bool:
    """True when a C++ compiler is on the PATH (``$CXX``, ``g++``, ``c++`` or ``clang++``): what
    ``torch.compile``'s inductor backend needs to build CPU kernels."""
    import shutil

    names = [os.environ["CXX"]] if os.environ.get("CXX") else []
    return any(shutil.which(n) for n in names + ["g++", "c++", "clang++"])


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it (else fp16), bf16 on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def configure_threads(num_threads: int | None) -> int:
    """Intra-op threads = physical cores available to this process unless given."""
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            num_threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(num_threads)))
    return torch.get_num_threads()


#: worker processes of the training loader on CUDA: nnU-Net's dozen augmentation workers, fewer
#: when the machine has fewer cores (one core stays with the training process)
MAX_CUDA_LOADER_WORKERS = 12


def loader_workers(setting: int | None, device: torch.device) -> int:
    """Worker processes making training batches (``num_workers``; 0 = one background thread).

    The setting if given; else on CUDA ``min(cores - 1, 12)`` (a GPU step takes milliseconds, one
    thread's augmentation 3-5 ms per patch), on a CPU 0: there the step, not the data, is the limit
    (data wait 0 %) and workers compete with its threads: 1 worker matched the thread, 2 were slower
    (benchmarks/RESULTS.md, issue 27).
    """
    if setting is not None:
        return int(setting)
    if device.type != "cuda":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return max(0, min(cores - 1, MAX_CUDA_LOADER_WORKERS))


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """channels_last memory format for training: the setting if given, else on for CUDA and off for
    CPU (prediction: :func:`inference_channels_last`).

    Measured on the project's AVX-512 CPU (MONAI U-Net, batch 8, 256x256, fp32 training,
    interleaved): 5.52 images/s contiguous versus 5.30 channels_last (docs/experiments.md).
    """
    return bool(setting) if setting is not None else device.type == "cuda"


def inference_channels_last(setting: bool | None, device: torch.device, precision: str) -> bool:
    """channels_last tensors for prediction: the setting if given, else on for CUDA; on a CPU on
    when the network runs in fp32 (``precision`` resolved), off in bf16/fp16.

    Measured through ``biomedseg.predict`` (default U-Net, one 2048 x 2048 image, interleaved,
    medians; ``benchmarks/channels_last_cpu.py``, benchmarks/RESULTS.md, a CPU shared with other
    jobs): fp32 with AVX2 kernels only (an AVX2-class CPU, where ``precision: auto`` is fp32) 2.15x
    (1 thread) and 1.56x (2 threads) faster channels-last, fp32 with AVX-512 1.15x and 1.42x; bf16 on
    the native-bf16 CPU (its ``auto``) 0.91x and 0.77x at 1 thread (contiguous faster).
    """
    if setting is not None:
        return bool(setting)
    if device.type == "cuda":
        return True
    return precision == "fp32"
