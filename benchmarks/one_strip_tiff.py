"""Streamed reading of a TIFF stored as one compressed strip: decoded once vs once per band.

    python benchmarks/one_strip_tiff.py              # 8000 x 8000 grey, zlib, one strip
    python benchmarks/one_strip_tiff.py --side 2000  # smoke run

Writes the image, then reads it band by band (256 full-width rows, as streamed ``predict`` does)
through :func:`biomedseg.stream.sources.open_source` twice: with the rule of
:mod:`biomedseg.io.sources.tiff` (a compressed chunk above ``LARGE_CHUNK_PIXELS`` is decoded once
per level and kept) and with that rule switched off (every band decodes the strip again: what
tifffile's zarr store does alone). Prints one JSON line: seconds, strip decodes, equality.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def _read_bands(path: Path, side: int, band: int) -> tuple[float, int, bool]:
    import zarr  # noqa: F401  (imported before the clock starts)

    from biomedseg.stream.sources import open_source

    decodes = []
    original = tifffile.TiffPage.__dict__["decode"]

    def counting(page):
        decode = original.func(page)

        def counted(*args, **kwargs):
            decodes.append(1)
            return decode(*args, **kwargs)

        return counted

    tifffile.TiffPage.decode = property(counting)
    try:
        expected = tifffile.imread(path)
        decodes.clear()
        t = time.perf_counter()
        with open_source(path) as src:
            ok = all(
                np.array_equal(src.read_rows(y, min(y + band, side))[..., 0], expected[y : y + band])
                for y in range(0, side, band)
            )
        return time.perf_counter() - t, len(decodes), ok
    finally:
        tifffile.TiffPage.decode = original


def main() -> None:
    import biomedseg.io.sources.tiff as tiff_source

    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=8000)
    ap.add_argument("--band", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one.tif"
        yy, xx = np.mgrid[0 : args.side, 0 : args.side]
        img = ((np.sin(yy / 50) + np.cos(xx / 70)) * 60 + 128).astype(np.uint8)
        img += np.random.default_rng(0).integers(0, 8, img.shape, dtype=np.uint8)
        tifffile.imwrite(path, img, compression="zlib", rowsperstrip=args.side)
        del yy, xx, img
        cached = _read_bands(path, args.side, args.band)
        rule = tiff_source.LARGE_CHUNK_PIXELS
        tiff_source.LARGE_CHUNK_PIXELS = 2**62  # the rule off: the strip re-decoded per band
        try:
            per_band = _read_bands(path, args.side, args.band)
        finally:
            tiff_source.LARGE_CHUNK_PIXELS = rule
        print(
            json.dumps(
                {
                    "side": args.side,
                    "band": args.band,
                    "file_mb": round(path.stat().st_size / 1e6, 1),
                    "decoded_once_s": round(cached[0], 2),
                    "decoded_once_decodes": cached[1],
                    "per_band_s": round(per_band[0], 2),
                    "per_band_decodes": per_band[1],
                    "equal": cached[2] and per_band[2],
                }
            )
        )


if __name__ == "__main__":
    main()
