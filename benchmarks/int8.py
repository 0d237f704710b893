"""int8 static quantisation (``biomedseg export --format onnx --int8``): accepted only by measurement.

1. Dice: for each run (default: the 5-minute runs of ``/work/fm_bench/<dataset>/run``), the test
   split of its data predicted through the public ``biomedseg.predict`` by the run folder (fp32,
   defaults) and by its int8 export (ONNX Runtime), no post-processing on either; foreground Dice
   (2TP / (2TP + FP + FN) over all test pixels, mean over foreground classes) of both against the
   ground truth. int8 is accepted when |delta Dice| <= 0.002 on every dataset.
2. Speed on one ``SIZE``² image (a real test image of the first run, tiled to that size): int8 ORT
   (``predict`` of the int8 export) vs fp32 ORT (``predict`` of the fp32 export) vs the default
   ``biomedseg.predict`` of the run folder vs MONAI ``sliding_window_inference`` on the same loaded
   weights (fp32, Gaussian, the run's tile/overlap, batch 4), interleaved A B C D per round, medians;
   masks compared with MONAI's argmax.

ONNX Runtime picks its kernels (MLAS) from the CPU's own flags: ``--cpu-class`` limits PyTorch and
oneDNN only; the RESULT line says so.

    python benchmarks/int8.py --size 2048 --repeats 2 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_class import add_option, apply_cpu_class, class_fields  # noqa: E402

RUNS = [f"/work/fm_bench/{d}/run" for d in ("isbi2012_em", "dsb2018_nuclei", "hc18_fetal_head")]
MAX_DELTA = 0.002


def test_pairs(loaded):
    """``[(image path, (H, W) uint8 class-index ground truth)]`` of the run's test split."""
    from biomedseg.data.splits import select_split
    from biomedseg.io import Palette, read_mask

    palette = Palette.from_json(loaded.info.palette)
    _, ids, by_id = select_split(loaded, None, None, None, "test")
    return [(by_id[s].image, read_mask(by_id[s].mask, palette, loaded.info.strict_index)[0]) for s in ids]


def fg_dice(pairs, folder: Path, n_classes: int, background: int) -> float:
    from biomedseg.io import read_raw

    tp, fp, fn = [0] * n_classes, [0] * n_classes, [0] * n_classes
    for image, truth in pairs:
        pred = read_raw(folder / f"{Path(image).stem}.png")
        for c in range(n_classes):
            p, t = pred == c, truth == c
            tp[c] += int((p & t).sum())
            fp[c] += int((p & ~t).sum())
            fn[c] += int((~p & t).sum())
    scores = [2 * tp[c] / max(2 * tp[c] + fp[c] + fn[c], 1) for c in range(n_classes) if c != background]
    return float(sum(scores) / len(scores))


def export_both(run: str, root: Path, with_fp32: bool):
    """The int8 export of ``run`` (and its fp32 export when ``with_fp32``: the speed run only)."""
    from biomedseg.export.quantize import Int8Options
    from biomedseg.export.writer import export_run

    name = Path(run).parent.name
    t = time.perf_counter()
    int8 = export_run(run, "onnx", root / f"{name}_int8.onnx", int8=Int8Options())
    seconds = time.perf_counter() - t
    fp32 = export_run(run, "onnx", root / f"{name}_fp32.onnx").path if with_fp32 else None
    return fp32, int8, seconds


def dice_rows(runs, root: Path, with_fp32: bool) -> list[dict]:
    from biomedseg import predict
    from biomedseg.inference.run import load_run

    rows = []
    for run in runs:
        name = Path(run).parent.name
        fp32_onnx, int8, seconds = export_both(run, root, with_fp32 and run == runs[0])
        loaded = load_run(run, device="cpu")
        pairs = test_pairs(loaded)
        files = [p for p, _ in pairs]
        dice = {}
        for label, source in (("fp32", loaded), ("int8", int8.path)):
            out = root / f"{name}_{label}"
            s = predict(source, files, out, postprocess=False, quiet=True, overlays=False)
            assert not s.failed, s.failed
            dice[label] = fg_dice(pairs, out, loaded.info.n_classes, loaded.info.background)
        q = int8.metadata["quantization"]
        rows.append(
            {
                "dataset": name,
                "n": len(pairs),
                **dice,
                "delta": dice["int8"] - dice["fp32"],
                "tiles": q["tiles"],
                "parity": int8.parity[0].argmax_agreement,
                "export_s": seconds,
                "fp32_onnx": fp32_onnx,
                "int8_onnx": int8.path,
            }
        )
        print(
            f"RESULT int8_dice dataset={name} n_test={len(pairs)} fp32={dice['fp32']:.4f} int8={dice['int8']:.4f} "
            f"delta={rows[-1]['delta']:+.4f} calib_tiles={q['tiles']} export_s={seconds:.0f} "
            f"parity_argmax={100 * rows[-1]['parity']:.3f}%",
            flush=True,
        )
    return rows


def speed(row: dict, run: str, size: int, repeats: int, root: Path) -> dict:
    import numpy as np
    from PIL import Image
    from predict_e2e import monai_mask

    from biomedseg import predict
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image

    loaded = load_run(run, device="cpu")
    first = read_image(test_pairs(loaded)[0][0])[..., 0]
    big = np.tile(first, (size // first.shape[0] + 1, size // first.shape[1] + 1))[:size, :size]
    path = root / "big.png"
    Image.fromarray(big).save(path)
    image = read_image(path)
    sources = {"int8_ort": row["int8_onnx"], "fp32_ort": row["fp32_onnx"], "predict_default": loaded}
    for label, src in sources.items():  # warm-up (sessions, compile where auto compiles)
        predict(src, [path], root / f"warm_{label}", quiet=True, overlays=False, postprocess=False)
    times: dict[str, list[float]] = {k: [] for k in (*sources, "monai")}
    for r in range(repeats):
        for label, src in sources.items():
            t = time.perf_counter()
            predict(src, [path], root / f"{label}_{r}", quiet=True, overlays=False, postprocess=False)
            times[label].append(time.perf_counter() - t)
        t = time.perf_counter()
        reference = monai_mask(loaded, image, 4)
        times["monai"].append(time.perf_counter() - t)
        print("  round", r + 1, {k: round(v[-1], 2) for k, v in times.items()}, flush=True)
    equal = {
        k: float((np.array(Image.open(root / f"{k}_{repeats - 1}" / "big.png")) == reference).mean()) for k in sources
    }
    mpix = {k: size * size / 1e6 / statistics.median(v) for k, v in times.items()}
    return {"mpix": mpix, "equal": equal, "times": times}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=RUNS)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    add_option(ap)
    args = ap.parse_args(argv)
    apply_cpu_class(args.cpu_class)
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="int8_"))
    rows = dice_rows(args.runs, root, not args.skip_speed)
    accepted = all(abs(r["delta"]) <= MAX_DELTA for r in rows)
    worst = max(abs(r["delta"]) for r in rows)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"RESULT int8_accepted={accepted} max_abs_delta={worst:.4f} rule=<= {MAX_DELTA} on all "
        f"peak_rss_mb={peak:.0f} load_avg={os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if args.skip_speed:
        return 0
    s = speed(rows[0], args.runs[0], args.size, args.repeats, root)
    m = s["mpix"]
    print(
        f"RESULT int8_speed size={args.size} run={rows[0]['dataset']} threads={args.threads} "
        + " ".join(f"{k}={v:.3f}MPix/s" for k, v in m.items())
        + f" int8_vs_monai={m['int8_ort'] / m['monai']:.2f} fp32_ort_vs_monai={m['fp32_ort'] / m['monai']:.2f} "
        f"default_vs_monai={m['predict_default'] / m['monai']:.2f} "
        + " ".join(f"equal_{k}={100 * v:.4f}%" for k, v in s["equal"].items())
        + f" load_avg={os.getloadavg()[0]:.1f} ort={onnxruntime.__version__} ort_kernels=own_cpuid(not --cpu-class)"
        + class_fields(args.cpu_class),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
