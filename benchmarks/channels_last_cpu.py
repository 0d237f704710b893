"""Channels-last versus contiguous tensors for CPU prediction, through ``biomedseg.predict`` itself.

Two run folders with the same weights (the default ``unet`` of ``biomedseg train``: MONAI U-Net,
width 32, depth 5, residual units; random weights, seed 0) that differ only by
``channels_last: true`` / ``false`` in their ``config.yaml``; each loaded once, then one random
grey ``SIZE x SIZE`` PNG predicted with ``biomedseg.predict`` (read, sliding window, argmax, mask
written; no overlay, ``compile="off"``) alternately A B A B ..., medians per thread count.

    python benchmarks/channels_last_cpu.py --size 2048 --threads 1 2 --repeats 3
    python benchmarks/channels_last_cpu.py --cpu-class avx2 --precision fp32

(the second line stands in for an AVX2-class CPU: no AVX-512 kernels, no native bf16, so
``precision: auto`` is fp32 there; ``benchmarks/cpu_class.py``). One ``RESULT`` line per thread
count, naming the CPU class measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_class import REPORTED_FLAGS, add_option, apply_cpu_class, class_fields, cpu_info  # noqa: E402


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
    add_option(ap)
    args = ap.parse_args()
    apply_cpu_class(args.cpu_class)

    from biomedseg import predict
    from biomedseg.inference.run import load_run

    root = Path(tempfile.mkdtemp(prefix="cl_bench_"))
    runs = write_runs(root, args.precision)
    loaded = {cl: load_run(path, device="cpu") for cl, path in runs.items()}
    rng = np.random.default_rng(0)
    image = root / "image.png"
    Image.fromarray(rng.integers(0, 256, (args.size, args.size), dtype=np.uint8)).save(image)
    flags = ",".join(f for f in REPORTED_FLAGS if f in cpu_info()["flags"])
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
            f"cpu_flags={flags} torch={torch.__version__}" + class_fields(args.cpu_class),
            flush=True,
        )


if __name__ == "__main__":
    main()
