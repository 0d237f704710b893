"""Peak memory of tiling a gigapixel slide: ``tile_dataset`` on a 20,000 x 20,000 RGB tiled TIFF.

    python benchmarks/tile_memory.py                 # 20000 x 20000 (the target: peak RSS < 1.5 GB)
    python benchmarks/tile_memory.py --size 4096     # smoke run

Writes an RGB tiled TIFF (256 px tiles, deflate) and its class mask tile by tile, never holding
either in memory (a synthetic "tissue" of stained blobs on a bright background with labelled
nuclei-like discs in part of it), then runs ``tile_dataset(..., size=512)`` in a fresh Python
process and prints one result line with that process's peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), wall time and tile counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 256


def _tile(y: int, x: int, size: int, rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One 256x256 RGB tile and its mask, deterministic from its position."""
    rng = np.random.default_rng((rng_seed, y, x))
    yy, xx = np.mgrid[y : y + TILE, x : x + TILE].astype(np.float32)
    # tissue: a large smooth blob pattern over the slide; outside it bright glass
    t = np.sin(yy / (size / 7.0)) * np.cos(xx / (size / 9.0))
    tissue = t > 0.1
    img = np.full((TILE, TILE, 3), 235, np.uint8)
    stain = np.stack([200 - 60 * t, 120 - 50 * t, 190 - 40 * t], axis=-1)
    img[tissue] = np.clip(stain[tissue] + rng.normal(0, 6, (int(tissue.sum()), 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((TILE, TILE), np.uint8)
    if tissue.any() and (y // TILE + x // TILE) % 3 == 0:
        for _ in range(int(rng.integers(1, 5))):
            cy, cx, r = rng.integers(20, TILE - 20), rng.integers(20, TILE - 20), rng.integers(6, 18)
            disc = (yy - (y + cy)) ** 2 + (xx - (x + cx)) ** 2 <= r * r
            disc &= tissue
            mask[disc] = 1
            img[disc] = (90, 40, 120)
    return img, mask


def write_slide(path: Path, mask_path: Path, size: int, seed: int = 0) -> None:
    import tifffile

    def tiles(which: int):
        for y in range(0, size, TILE):
            for x in range(0, size, TILE):
                img, mask = _tile(y, x, size, seed)
                yield img if which == 0 else mask

    big = size * size * 3 > 2**31
    tifffile.imwrite(
        path,
        tiles(0),
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(TILE, TILE),
        compression="zlib",
        photometric="rgb",
        bigtiff=big,
        metadata=None,
    )
    tifffile.imwrite(
        mask_path,
        tiles(1),
        shape=(size, size),
        dtype=np.uint8,
        tile=(TILE, TILE),
        compression="zlib",
        photometric="minisblack",
        bigtiff=big,
        metadata=None,
    )


CHILD = """
import json, resource, sys, time
from biomedseg.data.tiling.dataset import tile_dataset
t0 = time.perf_counter()
s = tile_dataset(sys.argv[1], sys.argv[2], size=512, keep_empty=0.1, tissue_threshold=0.2,
                 masks=sys.argv[3], progress=False)
wall = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": round(wall, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
                  "n_tiles": s["n_tiles"], "n_empty": s["n_empty"], "n_empty_kept": s["n_empty_kept"],
                  "n_blank_dropped": s["n_blank_dropped"]}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000, help="slide side in pixels (default 20000)")
    ap.add_argument("--workdir", default=None, help="keep the slide and tiles here")
    args = ap.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="biomedseg_tile_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        slide, mask = work / "slide.tif", work / "slide_mask.tif"
        t0 = time.perf_counter()
        write_slide(slide, mask, args.size)
        gen_s = time.perf_counter() - t0
        out = work / "tiles"
        if out.exists():
            shutil.rmtree(out)
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(slide), str(out), str(mask)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        result = {
            "benchmark": "tile_memory",
            "slide": f"{args.size}x{args.size} RGB tiled TIFF",
            "slide_mb": round(slide.stat().st_size / 2**20, 1),
            "generate_s": round(gen_s, 1),
            **child,
            "target_met": child["peak_rss_mb"] < 1536,
        }
        print(json.dumps(result))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
