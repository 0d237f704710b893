"""Patches per second that the training input pipeline delivers, per worker process, and whether
12 workers could feed the default U-Net on an H100.

    python benchmarks/loader_throughput.py                       # three shared datasets, 1 and 2 workers
    python benchmarks/loader_throughput.py --datasets isbi2012_em:256 --batches 4 --train-steps 0   # smoke

For each ``dataset:patch`` (default: ISBI EM grey 256², DRIVE RGB 256², MoNuSeg RGB 512²): the
training images decoded as ``biomedseg train`` does (``load_training_data``, its normaliser), the
default augmentation (``augment: default``) and rare-class oversampling, batches of ``--batch``
drawn through :class:`biomedseg.training.loader.BatchLoader` (the path training uses) by the background
thread (``workers=0``, for reference) and by 1 and 2 worker processes, interleaved (0 1 2 0 1 2 ...),
medians. Rate = patches of ``--batches`` batches / the time from the first batch to the last (worker
start-up left out). Per-worker rate = the 1-worker rate; scaling = 2-worker / 1-worker rate.

The H100 line is an **estimate**, not a measurement: the default U-Net's training FLOPs per patch
(3 x the forward FLOPs counted by ``FlopCounterMode``, ``biomedseg.models.summary``) at 40 % of
the H100's dense bf16 peak (989 TFLOP/s) give the patches per second a GPU step would consume;
compare with 12 x the per-worker rate. Replace it with ``benchmarks/gpu_suite.sh`` when a GPU is
available.

``--train-steps N`` (default 6) also times N training steps of the default U-Net on the first
dataset with the thread (``num_workers=0``) and with 1 and 2 worker processes, interleaved: on a
CPU-only machine the workers compete with the step's own threads; this is the measurement behind
the CPU default of ``num_workers`` (``biomedseg.runtime.device.loader_workers``).

One RESULT line per dataset and one for the training comparison; each names the load average
(a shared machine depresses the 1 -> 2 worker scaling) and the CPU class (``--cpu-class``).
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

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = "isbi2012_em:256,drive_retina:256,monuseg_histology:512"
H100_BF16_DENSE_TFLOPS = 989.0
GPU_UTILISATION = 0.40
GPU_WORKERS = 12


def load_source(folder: Path, patch: int, batch: int, seed: int = 0):
    """The decoded training split of ``folder`` and its :class:`BatchSource` with the default augmentation."""
    from biomedseg.data.datasets import PatchSampler
    from biomedseg.runs.config import TrainConfig
    from biomedseg.training.data_setup import load_training_data
    from biomedseg.training.loader import BatchSource
    from biomedseg.transforms.basic import build_augmenter
    from biomedseg.transforms.normalize import Normalizer

    cfg = TrainConfig(patch_size=patch, batch_size=batch, seed=seed)
    data = load_training_data(cfg, data=folder, with_val=False, quiet=True)
    normalizer = Normalizer.fit([s.image for s in data.train], cfg.normalization, seed=seed)
    sampler = PatchSampler(
        data.train,
        patch,
        data.n_classes,
        normalizer,
        build_augmenter(cfg.augment),
        cfg.fg_oversample,
        data.setup.background,
    )
    return data, BatchSource(sampler, batch, [seed, 0])


def loader_rate(source, workers: int, n_batches: int, epoch: int) -> float:
    """Patches/s that ``BatchLoader(source, workers)`` delivers (first batch excluded: start-up)."""
    from biomedseg.training.loader import BatchLoader

    loader = BatchLoader(source, workers)
    try:
        it = loader.epoch(epoch, n_batches + 1)
        it.next()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            it.next()
        dt = time.perf_counter() - t0
        it.close()
    finally:
        loader.close()
    return n_batches * source.batch_size / dt


def gpu_patch_rate(channels: int, patch: int) -> tuple[float, float]:
    """(patches/s an H100 would consume training the default U-Net, GFLOP per training patch): an estimate."""
    from biomedseg.models.summary import model_summary

    gflop = 3 * model_summary("unet", channels, 2, size=patch)["gflops"]  # forward + backward ~ 3x forward
    return H100_BF16_DENSE_TFLOPS * 1e3 * GPU_UTILISATION / gflop, gflop


def one_dataset(spec: str, args) -> str:
    name, patch = spec.split(":")
    data, source = load_source(SHARED / name, int(patch), args.batch)
    channels = data.setup.channels
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    for r in range(args.rounds):
        for w in args.workers:
            rates[w].append(loader_rate(source, w, args.batches, epoch=r))
            print(f"  {name} patch {patch} round {r + 1} workers={w}: {rates[w][-1]:7.1f} patches/s", flush=True)
    med = {w: statistics.median(v) for w, v in rates.items()}
    per_worker = med.get(1, float("nan"))
    scaling = med.get(2, float("nan")) / per_worker
    need, gflop = gpu_patch_rate(channels, int(patch))
    feed = GPU_WORKERS * per_worker
    load = os.getloadavg()
    return (
        f"RESULT loader_throughput dataset={name} channels={channels} patch={patch} batch={args.batch} "
        + " ".join(f"workers{w}={v:.1f}patches/s" for w, v in med.items())
        + f" per_worker={per_worker:.1f}patches/s scaling_1to2={scaling:.2f} "
        f"h100_estimate_need={need:.0f}patches/s (ESTIMATE: {gflop:.1f} GFLOP/patch at "
        f"{GPU_UTILISATION:.0%} of {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s bf16) "
        f"{GPU_WORKERS}x_per_worker={feed:.0f}patches/s "
        f"covers={feed / need:.2f} loadavg={load[0]:.1f},{load[1]:.1f} cores={os.cpu_count()}"
        + class_fields(args.cpu_class)
    )


class _Rows:
    """A RunLogger stand-in that keeps the epoch rows."""

    def __init__(self):
        self.rows = []

    def log(self, row):
        self.rows.append(row)


def train_rate(data, source, workers: int, steps: int, run_dir: Path) -> tuple[float, float]:
    """(images/s, data-wait share) of ``steps`` training steps of the default U-Net, ``workers`` processes."""
    import torch

    from biomedseg.losses.build import build_loss
    from biomedseg.models import create_model
    from biomedseg.runs.config import TrainConfig
    from biomedseg.runtime.device import resolve_precision
    from biomedseg.training.optim import ProgressSchedule, build_optimizer
    from biomedseg.training.trainer import Trainer

    torch.manual_seed(0)
    device = torch.device("cpu")
    k = data.n_classes
    cfg = TrainConfig(
        patch_size=source.sampler.patch, batch_size=source.batch_size, epochs=1, iterations_per_epoch=steps
    )
    cfg = cfg.model_copy(update={"num_workers": workers})
    model = create_model("unet", data.setup.channels, k)
    opt = build_optimizer(model, cfg)
    schedule = ProgressSchedule(opt, "constant", cfg.lr)
    s = data.setup
    precision = resolve_precision("auto", device)
    trainer = Trainer(
        cfg, model, build_loss("dice+ce", k), opt, schedule, source, [], None, k, s.classes, s.background, run_dir,
        device, precision, steps, quiet=True,
    )  # fmt: skip
    rows = _Rows()
    trainer.fit(logger=rows)
    return rows.rows[0]["images_per_s"], rows.rows[0]["data_wait_share"]


def train_comparison(spec: str, args) -> str:
    name, patch = spec.split(":")
    data, source = load_source(SHARED / name, int(patch), args.batch)
    work = Path(tempfile.mkdtemp(prefix="loader_train_"))
    workers = [0, 1, 2]
    ips: dict[int, list[float]] = {w: [] for w in workers}
    wait: dict[int, list[float]] = {w: [] for w in workers}
    for r in range(args.train_rounds):
        for w in workers:
            a, b = train_rate(data, source, w, args.train_steps, work / f"r{r}w{w}")
            ips[w].append(a)
            wait[w].append(b)
            print(f"  training {name} round {r + 1} num_workers={w}: {a:.2f} img/s, data wait {b:.0%}", flush=True)
    load = os.getloadavg()
    import torch

    return (
        f"RESULT loader_train dataset={name} patch={patch} batch={args.batch} steps={args.train_steps} "
        f"rounds={args.train_rounds} threads={torch.get_num_threads()} "
        + " ".join(
            f"num_workers{w}={statistics.median(ips[w]):.2f}img/s(wait {statistics.median(wait[w]):.0%})"
            for w in workers
        )
        + f" loadavg={load[0]:.1f},{load[1]:.1f}"
        + class_fields(args.cpu_class)
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DATASETS, help="comma-separated dataset:patch")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=6, help="0: skip the training comparison")
    ap.add_argument("--train-rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    add_option(ap)
    args = ap.parse_args(argv)
    apply_cpu_class(args.cpu_class)
    from biomedseg.runtime.device import configure_threads

    configure_threads(args.threads)
    lines = [one_dataset(spec, args) for spec in args.datasets.split(",")]
    for line in lines:
        print(line, flush=True)
    if args.train_steps:
        print(train_comparison(args.datasets.split(",")[0], args), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
