"""Training throughput: biomedseg's training step versus a plain MONAI reference loop.

    python benchmarks/train_throughput.py [--patch 256] [--batch 8] [--rounds 5]

Same architecture (MONAI UNet 32..512, 2 residual units, instance norm), same input size and
batch. Reference: float32, contiguous tensors, DiceCE loss, AdamW. biomedseg: its own
``Trainer.train_step`` with the precision and memory format that ``--precision auto`` and
``channels_last: null`` resolve to on this machine, plus variants for information. The sides are
interleaved (A B A B ...) and medians reported. Also measures the CPU's convolution peak in
float32 and bfloat16 (a large 3x3 convolution) to express achieved FLOP/s as a fraction of it.
``--compile`` adds the step under ``torch.compile`` (inductor; the compile time is printed).

On a CPU without native bf16 (an AVX2-class CPU, or ``--cpu-class avx2``/``avx512``: see
``benchmarks/cpu_class.py``) the bf16-autocast variant and the bf16 convolution peak are skipped,
and the output says so: there bf16 is emulated (about 0.2 images/s, a bf16 conv peak of 0.6
GFLOP/s), which took the whole script past 10 minutes. The achieved FLOP/s are then compared with
the fp32 peak. Prints one RESULT line last, naming the CPU class measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_class import add_option, apply_cpu_class, class_fields  # noqa: E402


def conv_peak(dtype: torch.dtype, reps: int = 5) -> float:
    """FLOP/s of a 3x3, 128->128 channel convolution on 8x128x128 (forward), in ``dtype``."""
    x = torch.randn(8, 128, 128, 128)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False)
    flops = 2 * 8 * 128 * 128 * 128 * 128 * 9
    ts = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for i in range(reps + 1):
            t0 = time.perf_counter()
            conv(x)
            if i:
                ts.append(time.perf_counter() - t0)
    return flops / statistics.median(ts)


def make_reference(patch, batch):
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(32, 64, 128, 256, 512),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="instance",
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(batch, 1, patch, patch)
    y = torch.randint(0, 2, (batch, 1, patch, patch))

    def step():
        net.train()
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def make_biomedseg(patch, batch, precision=None, channels_last=None, compile=False):
    from biomedseg.losses.build import build_loss
    from biomedseg.models import create_model
    from biomedseg.runs.config import TrainConfig
    from biomedseg.runtime.device import resolve_precision, use_channels_last
    from biomedseg.training.optim import ProgressSchedule, build_optimizer
    from biomedseg.training.trainer import Trainer

    torch.manual_seed(0)
    device = torch.device("cpu")
    cfg = TrainConfig(
        patch_size=patch, batch_size=batch, epochs=1, channels_last=channels_last, precision=precision or "auto"
    )
    model = create_model("unet", 1, 2, base_channels=32, depth=5, num_res_units=2)
    cl = use_channels_last(cfg.channels_last, device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    trainer = Trainer(
        cfg,
        torch.compile(model) if compile else model,
        build_loss("dice+ce", 2),
        opt,
        ProgressSchedule(opt, "constant", cfg.lr),
        None,
        [],
        None,
        2,
        ["background", "foreground"],
        0,
        "/tmp",
        device,
        resolve_precision(cfg.precision, device),
        1,
        quiet=True,
    )
    x = torch.randn(batch, 1, patch, patch)
    y = torch.randint(0, 2, (batch, patch, patch))
    return lambda: trainer.train_step(x, y), trainer.precision, cl


def timed(step, n: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round and side")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile (inductor)")
    add_option(ap)
    args = ap.parse_args(argv)
    apply_cpu_class(args.cpu_class)
    from biomedseg.models.summary import model_summary
    from biomedseg.runtime.device import configure_threads, cpu_has_native_bf16

    threads = configure_threads(args.threads)
    gflops_fwd = model_summary("unet", 1, 2, size=args.patch, base_channels=32)["gflops"]
    train_flop = 3 * gflops_fwd * 1e9  # forward + backward (about 2x forward)
    ref = make_reference(args.patch, args.batch)
    ours, precision, cl = make_biomedseg(args.patch, args.batch)
    native_bf16 = cpu_has_native_bf16()
    variants = {"channels_last": make_biomedseg(args.patch, args.batch, "fp32", True)[0]}
    if native_bf16:
        variants["bf16 autocast"] = make_biomedseg(args.patch, args.batch, "bf16", False)[0]
    else:
        print("bf16 autocast: skipped, this CPU (class) has no native bf16 (emulated bf16 is ~25x slower)")
    if args.compile:
        compiled = make_biomedseg(args.patch, args.batch, compile=True)[0]
        t0 = time.perf_counter()
        compiled()  # compiles forward and backward
        print(f"torch.compile: first step (compiling) {time.perf_counter() - t0:.0f} s")
        variants["torch.compile"] = compiled
    times = {"reference": [], "biomedseg": [], **{k: [] for k in variants}}
    for _ in range(args.rounds):  # interleaved
        times["reference"].append(timed(ref, args.steps))
        times["biomedseg"].append(timed(ours, args.steps))
        for k, fn in variants.items():
            times[k].append(timed(fn, 1))
    ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
    peaks = {"fp32": conv_peak(torch.float32)}
    if native_bf16:
        peaks["bf16"] = conv_peak(torch.bfloat16)
    for k, v in ips.items():
        print(f"{k:16s} {v:6.2f} images/s  {v * train_flop / 1e9:7.1f} GFLOP/s")
    print("conv peak: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    ratio = ips["biomedseg"] / ips["reference"]
    peak_of = "bf16" if precision == "bf16" and "bf16" in peaks else "fp32"
    frac = ips["biomedseg"] * train_flop / peaks[peak_of]
    print(
        f"RESULT train_throughput patch={args.patch} batch={args.batch} threads={threads} "
        f"biomedseg={ips['biomedseg']:.2f}img/s ({precision}, channels_last={cl}) "
        f"monai_fp32={ips['reference']:.2f}img/s ratio={ratio:.2f} fraction_of_{peak_of}_conv_peak={frac:.2f} "
        f"bf16_variant={'timed' if native_bf16 else 'skipped_no_native_bf16'}"
        + (
            f" compiled={ips['torch.compile']:.2f}img/s compiled_ratio={ips['torch.compile'] / ips['reference']:.2f}"
            if "torch.compile" in ips
            else ""
        )
        + class_fields(args.cpu_class)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
