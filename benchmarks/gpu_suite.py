"""The steps of ``benchmarks/gpu_suite.sh`` (one per process): what a GPU gives biomedseg.

    python benchmarks/gpu_suite.py train|data|predict|isbi [--dry-run]

- ``train``: training images/s of biomedseg's ``Trainer.train_step`` versus a plain MONAI loop
  (``DiceCELoss``, AdamW) on the same network (the default ``unet``), both with bf16 autocast,
  channels-last tensors and ``torch.compile``; interleaved rounds, medians.
- ``data``: does the GPU wait on data? The same training step fed by pre-made device tensors
  (synthetic) versus the real input pipeline on ISBI (``Trainer.fit``: patches, default
  augmentation, ``num_workers`` at its default for the device), with the loop's data-wait share.
- ``predict``: ``biomedseg.predict`` with its defaults on a run versus MONAI
  ``sliding_window_inference`` on the same weights (``benchmarks/predict_e2e.py``), MPix/s.
- ``isbi``: ``biomedseg train`` on ISBI 2012 with a 2-minute budget (the default plan), then the
  test split's Dice (membrane and cell interior).

``--dry-run`` runs every step on the CPU with tiny sizes (a small U-Net, 32² patches, a synthetic
dataset, ``torch.compile`` with the ``eager`` backend) in seconds: the test suite runs it so the
script is known to work before a GPU is at hand. Each step prints one RESULT line naming the device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TINY_NET = {"base_channels": 8, "depth": 3, "num_res_units": 0}


class Setup:
    """Sizes and device of a real (GPU) or dry (CPU, tiny) run."""

    def __init__(self, dry: bool):
        import torch

        self.dry = dry
        self.device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
        self.net = TINY_NET if dry else {}
        self.patch, self.batch = (32, 2) if dry else (256, 16)
        self.steps, self.rounds = (2, 1) if dry else (20, 3)
        self.compile_backend = "eager" if dry else "inductor"
        self.precision = "bf16" if self.device.type == "cuda" or dry else "fp32"

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def name(self) -> str:
        import torch

        what = torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu"
        return f"device={'_'.join(what.split())}" + (" DRY_RUN" if self.dry else "")


def _model(s: Setup, channels: int = 1, k: int = 2):
    import torch

    from biomedseg.models import create_model

    torch.manual_seed(0)
    m = create_model("unet", channels, k, **s.net).to(s.device)
    return m.to(memory_format=torch.channels_last)


def _trainer(s: Setup, model, batches=None, steps: int = 1, k: int = 2):
    import torch

    from biomedseg.losses.build import build_loss
    from biomedseg.runs.config import TrainConfig
    from biomedseg.training.optim import ProgressSchedule, build_optimizer
    from biomedseg.training.trainer import Trainer

    cfg = TrainConfig(patch_size=s.patch, batch_size=s.batch, epochs=1, iterations_per_epoch=steps, channels_last=True)
    opt = build_optimizer(model, cfg)
    net = torch.compile(model, backend=s.compile_backend)
    return Trainer(
        cfg, net, build_loss("dice+ce", k), opt, ProgressSchedule(opt, "constant", cfg.lr), batches, [], None, k,
        [f"class_{i}" for i in range(k)], 0, tempfile.mkdtemp(prefix="gpu_suite_"), s.device, s.precision, steps,
        quiet=True,
    )  # fmt: skip


def _monai_step(s: Setup, model):
    import torch
    from monai.losses import DiceCELoss

    net = torch.compile(model, backend=s.compile_backend)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def step(x, y):
        net.train()
        with torch.autocast(s.device.type, dtype=torch.bfloat16):
            out = net(x)
        loss = loss_fn(out.float(), y[:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _timed(s: Setup, step, x, y, n: int) -> float:
    s.sync()
    t = time.perf_counter()
    for _ in range(n):
        step(x, y)
    s.sync()
    return (time.perf_counter() - t) / n


def step_train(s: Setup) -> str:
    import torch

    x = torch.randn(s.batch, 1, s.patch, s.patch, device=s.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (s.batch, s.patch, s.patch), device=s.device)
    ours = _trainer(s, _model(s))
    sides = {"biomedseg": ours.train_step, "monai": _monai_step(s, _model(s))}
    t0 = time.perf_counter()
    for fn in sides.values():  # compiles
        _timed(s, fn, x, y, 2)
    compile_s = time.perf_counter() - t0
    times = {k: [] for k in sides}
    for _ in range(s.rounds):
        for k, fn in sides.items():
            times[k].append(_timed(s, fn, x, y, s.steps))
    ips = {k: s.batch / statistics.median(v) for k, v in times.items()}
    return (
        f"RESULT gpu_suite step=train {s.name()} patch={s.patch} batch={s.batch} precision={ours.precision} "
        f"channels_last=True compiled={not ours.compile_pending} biomedseg={ips['biomedseg']:.1f}img/s "
        f"monai_loop={ips['monai']:.1f}img/s ratio={ips['biomedseg'] / ips['monai']:.2f} compile_s={compile_s:.0f}"
    )


def _dataset(s: Setup) -> Path:
    if not s.dry and (SHARED / "isbi2012_em" / "dataset.json").is_file():
        return SHARED / "isbi2012_em"
    from biomedseg.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(
        Path(tempfile.mkdtemp(prefix="gpu_suite_data_")) / "d", n_train=6, n_test=2, size=(64, 64)
    )


class _Rows:
    def __init__(self):
        self.rows = []

    def log(self, row):
        self.rows.append(row)


def step_data(s: Setup) -> str:
    import torch

    from biomedseg.data.datasets import PatchSampler
    from biomedseg.runs.config import TrainConfig
    from biomedseg.training.data_setup import load_training_data
    from biomedseg.training.loader import BatchSource
    from biomedseg.transforms.basic import build_augmenter
    from biomedseg.transforms.normalize import Normalizer

    folder = _dataset(s)
    cfg = TrainConfig(patch_size=s.patch, batch_size=s.batch)
    data = load_training_data(cfg, data=folder, with_val=False, quiet=True)
    norm = Normalizer.fit([d.image for d in data.train], cfg.normalization)
    sampler = PatchSampler(data.train, s.patch, data.n_classes, norm, build_augmenter("default"), 0.33, 0)
    # fg_oversample 0.33 and augment "default": TrainConfig's defaults
    source = BatchSource(sampler, s.batch, [0, 0])
    n = s.steps * 3
    k = data.n_classes
    real = _trainer(s, _model(s, data.setup.channels, k), source, n, k)
    x, y = (torch.from_numpy(a).to(s.device) for a in source[(0, 0)])
    synthetic = real.train_step
    _timed(s, synthetic, x, y, 2)  # compiles
    rows = _Rows()
    real.fit(logger=rows)  # the real pipeline: workers at the device's default, pinned on CUDA
    synth = _timed(s, synthetic, x, y, n)
    real_ips, wait = rows.rows[0]["images_per_s"], rows.rows[0]["data_wait_share"]
    return (
        f"RESULT gpu_suite step=data {s.name()} dataset={folder.name} patch={s.patch} batch={s.batch} "
        f"num_workers={real.num_workers} synthetic={s.batch / synth:.1f}img/s real={real_ips:.1f}img/s "
        f"real/synthetic={real_ips * synth / s.batch:.2f} data_wait_share={wait:.2f}"
    )


def step_predict(s: Setup) -> str:
    import predict_e2e

    size = 160 if s.dry else 4096
    r = predict_e2e.compare(size, 1 if s.dry else 2, str(s.device), 4, s.net)
    return f"RESULT gpu_suite step=predict {s.name()} " + predict_e2e.result_line(r, 4, None).split(" ", 2)[2]


def step_isbi(s: Setup) -> str:
    from biomedseg.training.api import train
    from biomedseg.workflows.evaluation import evaluate

    folder = _dataset(s)
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_isbi_"))
    budget = 5 if s.dry else 120
    extra = {}
    if s.dry:  # no planning (it times steps): the tiny network on the CPU
        extra = {
            "model_kwargs": s.net,
            "patch_size": s.patch,
            "batch_size": s.batch,
            "device": "cpu",
            "auto_plan": False,
        }
    t = time.perf_counter()
    run = train(folder, work / "run", time_budget=budget, seed=0, quiet=True, **extra)
    took = time.perf_counter() - t
    m = evaluate(run, folder, work / "eval", overlays=False, quiet=True, device=str(s.device))
    per = " ".join(f"dice_{k}={v['dice']:.4f}" for k, v in m["per_class"].items())
    return (
        f"RESULT gpu_suite step=isbi {s.name()} dataset={folder.name} budget={budget}s wall={took:.0f}s "
        f"mean_dice={m['dice']:.4f} {per}"
    )


STEPS = {"train": step_train, "data": step_data, "predict": step_predict, "isbi": step_isbi}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=list(STEPS))
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny sizes")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()) if args.dry_run else torch.get_num_threads())
    print(STEPS[args.step](Setup(args.dry_run)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
