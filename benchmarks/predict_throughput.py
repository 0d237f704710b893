"""Throughput of whole-image prediction: MONAI's ``sliding_window_inference`` vs biomedseg's
``StreamingPredictor`` with its default CPU settings.

The same network (MONAI ``UNet``, channels 32-64-128-256-512, strides 2, ``num_res_units=2``,
about 6.5 M parameters, random weights), tile 256, overlap 0.25, Gaussian blending, float32, on a
random 1-channel image; both produce class probabilities and the argmax mask. Measured
interleaved (A B A B ...) in one process after a warm-up, reporting medians. Also measures the
raw forward rate of biomedseg's inference model (forward images/s x tile pixels / overlap factor,
where the overlap factor = tiles x tile pixels / image pixels): the bound no tiling can beat.

    python benchmarks/predict_throughput.py                   # 4096 x 4096, all cores
    python benchmarks/predict_throughput.py --size 1024 --threads 1 --repeats 1   # smoke run

Also measured in the same run: biomedseg's streaming predictor with the network in ONNX Runtime
(fp32, exported in memory as ``predict --engine onnxruntime`` does): the ``onnxruntime=`` field.
The result line records ``lscpu``'s model name, whether the CPU has the avx512_bf16, amx_bf16
and avx512_vnni flags, and the CPU class measured (``--cpu-class avx2`` measures an AVX2-only CPU
on a newer one: ``benchmarks/cpu_class.py``).

Then, unless ``--e2e-repeats 0``, the end-to-end line of ``benchmarks/predict_e2e.py``:
``biomedseg.predict`` with its defaults on a run folder versus MONAI on the same loaded weights,
masks compared (``RESULT predict_e2e``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_class import add_option, apply_cpu_class, class_fields  # noqa: E402


def build_model():
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(32, 64, 128, 256, 512),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    ).eval()


def onnxruntime_mpix(model, x: np.ndarray, args, kw: dict) -> float | None:
    """MPix/s of biomedseg's streaming predictor (the same tiling and blending as its torch path)
    with the network exported to ONNX in memory and run in ONNX Runtime, fp32, as ``predict
    --engine onnxruntime`` does; ``None`` when onnxruntime is not installed."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        return None
    from biomedseg.inference.exported.engines import ort_network
    from biomedseg.inference.exported.graph import onnx_model
    from biomedseg.stream.predictor import StreamingPredictor

    proto, _ = onnx_model(model, 1, args.tile)
    sp = StreamingPredictor(
        ort_network(proto.SerializeToString()), args.tile, args.overlap, precision="fp32", channels_last=False, **kw
    )
    sp.run(x[:, : args.tile * 2, : args.tile * 2], lambda y0, p: None)  # warm-up
    times = []
    for i in range(args.repeats):
        t = time.perf_counter()
        sp.run(x, lambda y0, p: None)
        times.append(time.perf_counter() - t)
        print(f"  repeat {i + 1}: onnxruntime {times[-1]:7.2f} s  {x.size / 1e6 / times[-1]:6.3f} MPix/s", flush=True)
    return x.size / 1e6 / statistics.median(times)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="image side in pixels")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=2, help="A/B pairs (medians are reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores available)")
    ap.add_argument("--monai-batch", type=int, default=4, help="MONAI sw_batch_size")
    ap.add_argument("--batch", type=int, default=None, help="biomedseg batch size (default: its default)")
    ap.add_argument("--forward-batches", type=int, default=5)
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="biomedseg precision (auto: bf16 where the CPU has native bf16, else fp32)",
    )
    ap.add_argument(
        "--compile",
        default="on",
        help="biomedseg: compile the network (on | off | a backend name); "
        "compiling happens in the warm-up and is reported as compile_s",
    )
    ap.add_argument("--e2e-repeats", type=int, default=2, help="end-to-end predict() vs MONAI pairs (0: skip)")
    add_option(ap)
    args = ap.parse_args(argv)
    apply_cpu_class(args.cpu_class)

    from monai.inferers import sliding_window_inference

    from biomedseg.engine.band_accumulator import argmax0
    from biomedseg.engine.compiled import normalize_compile
    from biomedseg.engine.sliding_window import tile_starts
    from biomedseg.runtime.device import configure_threads, cpu_has_native_bf16
    from biomedseg.stream.predictor import StreamingPredictor

    threads = configure_threads(args.threads)
    torch.manual_seed(0)
    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    precision = args.precision if args.precision != "auto" else "bf16" if cpu_has_native_bf16() else "fp32"
    kw = {} if args.batch is None else {"batch_size": args.batch}
    compile_mode = normalize_compile(args.compile)
    sp = StreamingPredictor(model, args.tile, args.overlap, precision=precision, compile=compile_mode, **kw)
    x = np.random.default_rng(0).normal(size=(1, args.size, args.size)).astype(np.float32)
    xt = torch.from_numpy(x)[None]
    n_pix = args.size * args.size
    n_tiles = len(tile_starts(args.size, args.tile, args.overlap)) ** 2
    overlap_factor = n_tiles * args.tile**2 / n_pix
    print(
        f"model: MONAI UNet {n_params / 1e6:.2f} M parameters; image {args.size}x{args.size}, tile {args.tile}, "
        f"overlap {args.overlap}: {n_tiles} tiles (overlap factor {overlap_factor:.2f}); threads {threads}; "
        f"biomedseg precision {precision} batch {sp.batch_size} compile {compile_mode}, MONAI fp32 batch "
        f"{args.monai_batch}",
        flush=True,
    )

    def run_monai() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(
                xt,
                (args.tile, args.tile),
                args.monai_batch,
                model,
                overlap=args.overlap,
                mode="gaussian",
                sigma_scale=0.125,
            )
            argmax0(torch.softmax(logits[0], 0))
        return time.perf_counter() - t

    def run_biomedseg() -> float:
        t = time.perf_counter()
        sp.run(x, lambda y0, p: argmax0(p))
        return time.perf_counter() - t

    # warm-up on a small crop (allocator, oneDNN primitives)
    with torch.inference_mode():
        sliding_window_inference(
            xt[..., : args.tile * 2, : args.tile * 2],
            (args.tile, args.tile),
            args.monai_batch,
            model,
            overlap=args.overlap,
            mode="gaussian",
        )
    t = time.perf_counter()
    sp.run(x[:, : args.tile * 2, : args.tile * 2], lambda y0, p: None)  # compiles a compiled model
    compile_s = time.perf_counter() - t
    compiled = bool(getattr(sp.model, "active", False))

    times = {"monai": [], "biomedseg": []}
    for i in range(args.repeats):
        for name, fn in (("monai", run_monai), ("biomedseg", run_biomedseg)):
            dt = fn()
            times[name].append(dt)
            print(f"  repeat {i + 1}: {name:9s} {dt:7.2f} s  {n_pix / 1e6 / dt:6.3f} MPix/s", flush=True)
    ort = onnxruntime_mpix(model, x, args, kw)
    med = {k: statistics.median(v) for k, v in times.items()}
    mpix = {k: n_pix / 1e6 / v for k, v in med.items()}

    # raw forward rate of the inference model biomedseg uses, at its precision
    from biomedseg.engine.sliding_window import tta_forward

    b = sp.batch_size
    tiles = torch.randn(b, 1, args.tile, args.tile)
    nets = {"forward": sp.model, "eager": getattr(sp.model, "_orig_mod", sp.model)}
    rates = {k: [] for k in nets}
    with torch.inference_mode():
        for net in nets.values():  # warm-up
            tta_forward(net, tiles, sp.transforms, sp.device, sp.precision, sp.channels_last)
        for _ in range(args.forward_batches):  # interleaved: compiled (or eager) network, then the eager one
            for k, net in nets.items():
                t = time.perf_counter()
                tta_forward(net, tiles, sp.transforms, sp.device, sp.precision, sp.channels_last)
                rates[k].append(b / (time.perf_counter() - t))
    fwd, fwd_eager = (statistics.median(rates[k]) for k in nets)
    bound = fwd * args.tile**2 / overlap_factor / 1e6
    line = (
        f"RESULT predict_throughput size={args.size} tile={args.tile} overlap={args.overlap} threads={threads} "
        f"monai={mpix['monai']:.3f}MPix/s biomedseg={mpix['biomedseg']:.3f}MPix/s "
        f"ratio={mpix['biomedseg'] / mpix['monai']:.2f} forward={fwd:.2f}img/s({precision}) "
        f"forward_bound={bound:.3f}MPix/s biomedseg/bound={mpix['biomedseg'] / bound:.2f} "
        f"compiled={compiled} compile_s={compile_s:.1f} forward_eager={fwd_eager:.2f}img/s"
    )
    line += (f" onnxruntime={ort:.3f}MPix/s" if ort is not None else " onnxruntime=absent") + class_fields(
        args.cpu_class
    )
    print(line, flush=True)
    if args.e2e_repeats:
        import predict_e2e

        r = predict_e2e.compare(args.size, args.e2e_repeats, "cpu", args.monai_batch)
        print(predict_e2e.result_line(r, args.monai_batch, args.cpu_class), flush=True)
    return line


if __name__ == "__main__":
    main()
