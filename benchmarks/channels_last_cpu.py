"""Channels-last versus contiguous tensors for CPU prediction, through ``biomedseg.predict`` itself.

Two run folders with the same weights (the default ``unet`` of ``biomedseg train``: MONAI U-Net,
width 32, depth 5, residual units; random weights, seed 0) that differ only by
``channels_last: true`` / ``false`` in their ``config.yaml``; each loaded once, then one random
grey ``SIZE x SIZE`` PNG predicted with ``biomedseg.predict`` (read, sliding window, argmax, mask
written; no overlay, ``compile="off"``) alternately A B A B ..., medians per thread count.

    python benchmarks/channels_last_cpu.py --size 2048 --threads 1 2 --repeats 3
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/channels_last_cpu.py --precision fp32

(the second line stands in for an AVX2-class CPU: no AVX-512 kernels, no native bf16, so
``precision: auto`` would be fp32 there). One ``RESULT`` line per thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return ",".join(f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags)


def write_runs(root: Path, precision: str) -> dict[bool, Path]:
    from biomedseg.models import create_model
    from biomedseg.runs import DatasetInfo, write_run

    torch.manual_seed(0)
    state = create_model("unet", 1, 2).state_dict()
    info = DatasetInfo(
        classes=["background", "fg"],
        background=0,
        palette={"values": [[0], [1]]},
        strict_index=False,
        channels=1,
        n_classes=2,
        normalization={"mean": [128.0], "std": [64.0]},
        split={"train": [], "val": []},
        source="",
    )
    runs = {}
    for cl in (False, True):
        runs[cl] = write_run(
            root / f"run_cl{int(cl)}",
            {"model": "unet", "precision": precision, "channels_last": cl},
            info,
            {"model": state},
        ).root
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()

    from biomedseg import predict
    from biomedseg.inference.run import load_run

    root = Path(tempfile.mkdtemp(prefix="cl_bench_"))
    runs = write_runs(root, args.precision)
    loaded = {cl: load_run(path, device="cpu") for cl, path in runs.items()}
    rng = np.random.default_rng(0)
    image = root / "image.png"
    Image.fromarray(rng.integers(0, 256, (args.size, args.size), dtype=np.uint8)).save(image)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ)
    for threads in args.threads:
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.repeats + 1):  # round 0: warm-up
            for cl in (False, True):
                torch.set_num_threads(threads)
                t = time.perf_counter()
                s = predict(
                    loaded[cl],
                    [image],
                    root / f"out{int(cl)}",
                    overlays=False,
                    overwrite=True,
                    quiet=True,
                    compile="off",
                )
                dt = time.perf_counter() - t
                assert not s.failed, s.failed
                if r:
                    times[cl].append(dt)
                print(f"threads={threads} round={r} channels_last={cl}: {dt:.2f} s", flush=True)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"RESULT channels_last_cpu size={args.size} threads={threads} precision={loaded[True].precision} "
            f"contiguous={off:.2f}s channels_last={on:.2f}s speedup={off / on:.2f} "
            f"cpu_flags={cpu_flags()} {env or 'native'} torch={torch.__version__}",
            flush=True,
        )


if __name__ == "__main__":
    main()
