"""Peak memory of streaming prediction on a huge tiled TIFF (target: < 2 GB at 30,000 x 30,000).

1. Writes (once, tile by tile, never holding the image) a single-channel uint8 tiled BigTIFF of
   ``--size`` x ``--size`` pixels with synthetic "tissue": smooth blobs with texture on a flat
   background (zlib-compressed, 512 x 512 tiles).
2. In a **child process** (so that the generation does not count), builds a run-less streaming
   predictor (MONAI U-Net, random weights; ``--model full`` = channels 32..512 as in the
   throughput benchmark, ``small`` = 8..64 for quick checks), predicts the TIFF to a tiled TIFF
   mask (+ optional float16 probabilities), and reports its peak RSS (``ru_maxrss``) next to the
   RSS after loading torch and the model, plus an RSS time line sampled every second.

    python benchmarks/predict_memory.py --size 30000                  # the real check (long)
    python benchmarks/predict_memory.py --size 4096 --model small --threads 1   # smoke run
    python benchmarks/predict_memory.py --size 30000 --height 768 --model small   # full-width band

Memory depends on the width only (one band of ``tile`` rows is held), so ``--height`` short of
``--size`` checks the peak of a full-width image in a fraction of the time.

The last line is the single result line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

GB = 1024**3


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def write_tissue_tiff(path: Path, size: int, tile: int = 512, seed: int = 0, height: int | None = None) -> None:
    """A ``height`` x ``size`` uint8 tiled BigTIFF written tile by tile (a few tiles in memory)."""
    import tifffile

    height = height or size
    rng = np.random.default_rng(seed)
    n_blobs = max(4, height * size // (1500 * 1500))
    centres = rng.uniform(0, 1, size=(n_blobs, 2)) * [height, size]
    radii = rng.uniform(100, 600, size=n_blobs) * min(1.0, size / 4096 + 0.25)
    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32)
    texture = (rng.normal(0, 12, size=(tile, tile))).astype(np.float32)

    def tiles():
        for y0 in range(0, height, tile):
            for x0 in range(0, size, tile):
                # blobs touching this tile
                near = np.flatnonzero(
                    (np.abs(centres[:, 0] - (y0 + tile / 2)) < radii + tile)
                    & (np.abs(centres[:, 1] - (x0 + tile / 2)) < radii + tile)
                )
                img = np.full((tile, tile), 235.0, np.float32)  # bright, flat background
                for i in near:
                    d2 = (yy + y0 - centres[i, 0]) ** 2 + (xx + x0 - centres[i, 1]) ** 2
                    inside = d2 < radii[i] ** 2
                    img[inside] = 120.0 + texture[inside] + 40.0 * np.cos(np.sqrt(d2[inside]) / 15.0)
                yield np.clip(img, 0, 255).astype(np.uint8)

    tmp = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(
            tiles(),
            shape=(height, size),
            dtype=np.uint8,
            tile=(tile, tile),
            compression="zlib",
            compressionargs={"level": 1},
            photometric="minisblack",
            metadata=None,
        )
    os.replace(tmp, path)


def _child(args) -> None:
    """Predict in this process and print one JSON line with the memory figures."""
    import torch

    from biomedseg.runtime.device import configure_threads
    from biomedseg.stream.predictor import StreamingPredictor
    from biomedseg.transforms.normalize import Normalizer

    threads = configure_threads(args.threads)
    from monai.networks.nets import UNet

    channels = (32, 64, 128, 256, 512) if args.model == "full" else (8, 16, 32, 64)
    torch.manual_seed(0)
    model = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=2,
    ).eval()
    sp = StreamingPredictor(
        model,
        args.tile,
        args.overlap,
        normalizer=Normalizer([180.0], [50.0]),
        channels=1,
        skip_blank_std=args.skip_blank_std,
        batch_size=args.batch,
    )
    rss_loaded = _rss_bytes()
    timeline, stop = [], threading.Event()

    def sample():
        t0 = time.perf_counter()
        while not stop.wait(1.0):
            timeline.append((round(time.perf_counter() - t0, 1), round(_rss_bytes() / 2**20)))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = Path(args.out)
    t = time.perf_counter()
    res = sp.predict_to_files(args.tiff, out / "mask.tif", out / "proba.tif" if args.proba else None)
    seconds = time.perf_counter() - t
    stop.set()
    th.join()
    print(
        json.dumps(
            {
                "peak_rss": _peak_rss_bytes(),
                "rss_loaded": rss_loaded,
                "seconds": seconds,
                "tiles": res.n_tiles,
                "skipped": res.n_skipped,
                "threads": threads,
                "timeline_mib": timeline[:: max(1, len(timeline) // 20)],
            }
        )
    )


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=30000, help="image width (and height unless --height)")
    ap.add_argument("--height", type=int, default=None, help="image height (default: --size)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--model", choices=("full", "small"), default="full")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--skip-blank-std", type=float, default=None, help="skip tiles whose normalised std is below this (background)"
    )
    ap.add_argument("--proba", action="store_true", help="also write float16 probabilities")
    ap.add_argument("--workdir", type=Path, default=None, help="where the TIFFs go (default: a temp folder)")
    ap.add_argument("--limit-gb", type=float, default=2.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tiff", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return ""
    work = args.workdir or Path(tempfile.mkdtemp(prefix="biomedseg_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    height = args.height or args.size
    tiff = work / f"tissue_{height}x{args.size}.tif"
    if not tiff.is_file():
        t = time.perf_counter()
        write_tissue_tiff(tiff, args.size, height=height)
        print(f"wrote {tiff} ({tiff.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s", flush=True)
    out = work / "out"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--tiff",
        str(tiff),
        "--out",
        str(out),
        "--tile",
        str(args.tile),
        "--overlap",
        str(args.overlap),
        "--batch",
        str(args.batch),
        "--model",
        args.model,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.skip_blank_std is not None:
        cmd += ["--skip-blank-std", str(args.skip_blank_std)]
    if args.proba:
        cmd += ["--proba"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    import tifffile

    with tifffile.TiffFile(out / "mask.tif") as tf:
        shape, tiled = tf.series[0].shape, tf.pages[0].is_tiled
    print(f"RSS time line (s, MiB): {r['timeline_mib']}")
    ok = r["peak_rss"] < args.limit_gb * GB and tuple(shape) == (height, args.size)
    line = (
        f"RESULT predict_memory size={height}x{args.size} model={args.model} threads={r['threads']} "
        f"peak_rss={r['peak_rss'] / GB:.2f}GB (after model load {r['rss_loaded'] / GB:.2f}GB) "
        f"limit={args.limit_gb}GB {'OK' if ok else 'FAIL'} time={r['seconds']:.1f}s "
        f"{height * args.size / 1e6 / r['seconds']:.2f}MPix/s tiles={r['tiles']} skipped={r['skipped']} "
        f"mask={shape[0]}x{shape[1]} tiled={tiled}"
    )
    print(line, flush=True)
    return line


if __name__ == "__main__":
    main()
