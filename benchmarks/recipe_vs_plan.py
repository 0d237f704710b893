"""Test Dice of the textbook recipe against ``biomedseg train`` (default plan) at the same CPU budget.

    python benchmarks/recipe_vs_plan.py [--budget 15m] [--datasets a,b] [--threads 2]
                                        [--sides recipe,plan] [--refresh] [--work DIR --keep]

For each dataset of ``--shared`` (default ``../shared/datasets``: every folder with a
``dataset.json``), one after the other, never at once:

(a) recipe: the textbook 2D segmentation loop, written here without any biomedseg code. Images
    scaled to [0, 1] by their dtype's range, resized to 256x256 (bilinear, anti-aliased), z-scored
    with the training images' per-channel mean/std; masks resized by nearest neighbour. MONAI
    ``UNet`` (channels 16..256, strides 2, 2 residual units, one output per class), ``DiceCELoss``
    (softmax, one-hot targets), Adam lr 1e-3, batches of 16 drawn at random with replacement,
    random horizontal flips (p = 0.5), seed 0, the whole train list, the final weights. Training
    stops at the first step that starts after the budget (wall clock from the first image read,
    data loading included). Test: softmax at 256x256, upsampled bilinearly to the native size,
    argmax.
(b) plan: ``biomedseg train DATA --out RUN --time-budget B --set num_threads=T`` then
    ``biomedseg predict RUN <test images>`` (the CLI defaults: best checkpoint, the run's
    post-processing), both as subprocesses.

One scorer for both: per class, Dice pooled over the test images at native resolution
(2 sum TP / (2 sum TP + sum FP + sum FN)); the score is the mean over the foreground classes
(every class but the one named background; a dataset without such a class, e.g. isbi2012_em,
counts all classes, as ``biomedseg``'s ``background: auto`` does).

The recipe's results are cached per dataset, budget, CPU (lscpu model name, avx512_bf16/amx_bf16
present) and thread count under ``benchmarks/.cache/recipe_vs_plan/``: ``--sides plan`` reruns
only the plan side and reads the recipe from there (``recipe=nan`` when nothing is cached);
``--refresh`` ignores the cache. The plan side's JSON is written there too (never read back).
The last line per dataset is
``RESULT recipe_vs_plan dataset=NAME budget=15m recipe=0.xxxx plan=0.xxxx``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
CACHE = HERE / ".cache" / "recipe_vs_plan"
RECIPE_VERSION = 1  # bump when the recipe changes: older cache entries are then ignored
SIZE = 256
BATCH = 16
LR = 1e-3
CHANNELS = (16, 32, 64, 128, 256)
BACKGROUND_NAMES = ("background", "bg", "back")
IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


# ---------------------------------------------------------------- small helpers (tested)


def parse_budget(text: str) -> float:
    """``"20s"``, ``"15m"``, ``"1.5h"`` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"budget {text!r}: expected a positive number with s, m or h (e.g. 15m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def foreground_classes(classes: list[str]) -> list[int]:
    """Every class index but the one named background (all of them when none is)."""
    bg = [i for i, n in enumerate(classes) if n.lower() in BACKGROUND_NAMES]
    return [i for i in range(len(classes)) if i not in bg[:1]]


def dice_counts(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, 3)`` int64 array of (TP, FP, FN) per class of one image (same shape index masks)."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and mask {truth.shape} differ in shape")
    cm = np.bincount(
        truth.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel(), minlength=n_classes * n_classes
    )[: n_classes * n_classes].reshape(n_classes, n_classes)
    tp = np.diag(cm)
    return np.stack([tp, cm.sum(0) - tp, cm.sum(1) - tp], axis=1).astype(np.int64)


def pooled_dice(counts: np.ndarray, classes: list[str]) -> tuple[dict, float]:
    """(``{class: Dice}`` from summed counts, mean over foreground classes); a class absent from
    both prediction and truth has Dice nan and is left out of the mean."""
    per_class = {}
    for i, name in enumerate(classes):
        tp, fp, fn = (int(v) for v in counts[i])
        per_class[name] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    fg = [per_class[classes[i]] for i in foreground_classes(classes)]
    fg = [d for d in fg if not math.isnan(d)]
    return per_class, (float(np.mean(fg)) if fg else float("nan"))


def cpu_info() -> dict:
    """lscpu's model name and whether its flags include avx512_bf16 / amx_bf16 (``benchmarks/cpu_class.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cpu_class import cpu_info as read_cpu

    info = read_cpu()
    return {"model": info["model"], **{f: f in info["flags"] for f in BF16_FLAGS}}


def cache_path(kind: str, dataset: str, budget_s: float, threads: int, cpu: dict) -> Path:
    """``CACHE/<kind>_<dataset>_<budget>s_t<threads>_<hash of CPU + recipe version>.json``."""
    key = json.dumps({"cpu": cpu, "version": RECIPE_VERSION}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return CACHE / f"{kind}_{dataset}_{budget_s:g}s_t{threads}_{digest}.json"


# ---------------------------------------------------------------- dataset reading (no biomedseg)


def find_datasets(shared: Path, names: str | None) -> list[Path]:
    found = sorted(p.parent for p in shared.glob("*/dataset.json"))
    if not names:
        return found
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    missing = [n for n in wanted if not (shared / n / "dataset.json").is_file()]
    if missing:
        raise SystemExit(f"{shared}: no dataset.json for {', '.join(missing)}")
    return [shared / n for n in wanted]


def dataset_meta(folder: Path) -> dict:
    """classes, train/test ids and ``{id: image path}``, ``{id: mask path}`` of a dataset folder."""
    meta = json.loads((folder / "dataset.json").read_text())

    def by_stem(sub: str) -> dict:
        return {p.stem: p for p in sorted((folder / sub).iterdir()) if p.suffix.lower() in IMAGE_EXTS}

    images, masks = by_stem("images"), by_stem("masks")
    split = meta["split"]
    for part in ("train", "test"):
        lost = [i for i in split[part] if i not in images or i not in masks]
        if lost:
            raise SystemExit(f"{folder}: {part} ids without image or mask: {lost[:5]}")
    return {
        "name": folder.name,
        "classes": list(meta["classes"]),
        "train": list(split["train"]),
        "test": list(split["test"]),
        "images": images,
        "masks": masks,
    }


def read_array(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def read_image(path: Path) -> np.ndarray:
    """``(H, W, C)`` float32 in [0, 1] (integers divided by their dtype's maximum); alpha dropped."""
    a = read_array(path)
    if a.ndim == 2:
        a = a[..., None]
    elif a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels-first TIFF
    if a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    return a.astype(np.float32)


def read_mask(path: Path) -> np.ndarray:
    m = read_array(path)
    return (m[..., 0] if m.ndim == 3 else m).astype(np.int64)


# ---------------------------------------------------------------- (a) the textbook recipe


def to_network(image: np.ndarray, channels: int):
    """``(H, W, c)`` float image -> ``(1, channels, SIZE, SIZE)`` tensor (anti-aliased bilinear)."""
    import torch
    import torch.nn.functional as F

    if image.shape[-1] != channels:
        image = np.repeat(image[..., :1], channels, axis=-1) if channels == 3 else image.mean(-1, keepdims=True)
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    return F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)


def load_training(meta: dict):
    """Training images ``(N, C, SIZE, SIZE)`` z-scored, masks ``(N, 1, SIZE, SIZE)`` long, channels, mean, std."""
    import torch
    import torch.nn.functional as F

    images = [read_image(meta["images"][i]) for i in meta["train"]]
    channels = 3 if any(im.shape[-1] >= 3 for im in images) else 1
    x = torch.cat([to_network(im, channels) for im in images])
    masks = [torch.from_numpy(read_mask(meta["masks"][i]))[None, None].float() for i in meta["train"]]
    y = torch.cat([F.interpolate(m, size=(SIZE, SIZE), mode="nearest-exact") for m in masks]).long()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std, y, channels, mean, std


def make_model(channels: int, n_classes: int):
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=channels,
        out_channels=n_classes,
        channels=CHANNELS,
        strides=(2, 2, 2, 2),
        num_res_units=2,
    )


def train_recipe(model, x, y, deadline: float) -> tuple[int, float]:
    """Adam + Dice/CE on random batches with horizontal flips until ``deadline`` (perf_counter);
    returns (steps, mean loss of the last 20 steps)."""
    import torch
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    model.train()
    steps, losses = 0, []
    while time.perf_counter() < deadline:
        idx = torch.randint(0, len(x), (BATCH,), generator=gen)
        xb, yb = x[idx], y[idx]
        flip = torch.rand(BATCH, generator=gen) < 0.5
        xb[flip], yb[flip] = xb[flip].flip(-1), yb[flip].flip(-1)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        steps += 1
        losses = (losses + [loss.item()])[-20:]
    return steps, (float(np.mean(losses)) if losses else float("nan"))


def score_recipe(model, meta: dict, channels: int, mean, std) -> np.ndarray:
    """Summed (TP, FP, FN) per class over the test images, predicted at SIZE and argmax at native size."""
    import torch
    import torch.nn.functional as F

    k = len(meta["classes"])
    counts = np.zeros((k, 3), np.int64)
    model.eval()
    with torch.inference_mode():
        for i in meta["test"]:
            image, truth = read_image(meta["images"][i]), read_mask(meta["masks"][i])
            proba = torch.softmax(model((to_network(image, channels) - mean) / std), dim=1)
            proba = F.interpolate(proba, size=truth.shape, mode="bilinear", align_corners=False)
            counts += dice_counts(proba[0].argmax(0).numpy(), truth, k)
    return counts


def run_recipe(meta: dict, budget_s: float, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    t0 = time.perf_counter()
    x, y, channels, mean, std = load_training(meta)
    load_s = time.perf_counter() - t0
    model = make_model(channels, len(meta["classes"]))
    steps, loss = train_recipe(model, x, y, t0 + budget_s)
    train_s = time.perf_counter() - t0
    counts = score_recipe(model, meta, channels, mean, std)
    per_class, score = pooled_dice(counts, meta["classes"])
    return {
        "side": "recipe",
        "dataset": meta["name"],
        "dice": score,
        "per_class": per_class,
        "counts": counts.tolist(),
        "steps": steps,
        "final_loss": loss,
        "channels": channels,
        "load_s": round(load_s, 1),
        "train_s": round(train_s, 1),
        "test_s": round(time.perf_counter() - t0 - train_s, 1),
        "n_train": len(meta["train"]),
        "n_test": len(meta["test"]),
    }


# ---------------------------------------------------------------- (b) biomedseg's default plan


def biomedseg_cli(args: list[str], log: Path) -> None:
    """``python -m biomedseg.cli ARGS`` with its output in ``log``; exits with its tail on failure."""
    with open(log, "a") as f:
        f.write("$ biomedseg " + " ".join(args) + "\n")
        f.flush()
        rc = subprocess.run(
            [sys.executable, "-m", "biomedseg.cli", *args], stdout=f, stderr=subprocess.STDOUT
        ).returncode
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"biomedseg {args[0]} failed (exit {rc}); log {log}:\n{tail}")


def plan_steps(run: Path) -> str:
    """The last ``iteration`` of the run's per-epoch log, when there is one (informative only)."""
    log = run / "metrics.csv"
    if not log.is_file():
        return "n/a"
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    return str(rows[-1].get("iteration", "n/a")) if rows else "n/a"


def predicted_mask(folder: Path, stem: str) -> np.ndarray:
    for ext in (".png", ".tif"):
        if (folder / f"{stem}{ext}").is_file():
            return read_mask(folder / f"{stem}{ext}")
    raise SystemExit(f"{folder}: no predicted mask for {stem}")


def run_plan(meta: dict, data: Path, budget: str, threads: int, work: Path) -> dict:
    run, pred = work / f"{meta['name']}_{budget}_plan", work / f"{meta['name']}_{budget}_pred"
    for old in (run, pred):
        if old.exists():
            shutil.rmtree(old)  # our own output of an earlier call with the same --work
    log = work / f"{meta['name']}_{budget}_plan.log"
    t0 = time.perf_counter()
    biomedseg_cli(
        ["train", str(data), "--out", str(run), "--time-budget", budget, "--set", f"num_threads={threads}", "--quiet"],
        log,
    )
    train_s = time.perf_counter() - t0
    biomedseg_cli(
        [
            "predict",
            str(run),
            *[str(meta["images"][i]) for i in meta["test"]],
            "--out",
            str(pred),
            "--no-overlays",
            "--quiet",
        ],
        log,
    )
    k = len(meta["classes"])
    counts = np.zeros((k, 3), np.int64)
    for i in meta["test"]:
        counts += dice_counts(predicted_mask(pred, meta["images"][i].stem), read_mask(meta["masks"][i]), k)
    per_class, score = pooled_dice(counts, meta["classes"])
    return {
        "side": "plan",
        "dataset": meta["name"],
        "dice": score,
        "per_class": per_class,
        "counts": counts.tolist(),
        "steps": plan_steps(run),
        "train_s": round(train_s, 1),
        "test_s": round(time.perf_counter() - t0 - train_s, 1),
        "run": str(run),
        "log": str(log),
    }


# ---------------------------------------------------------------- driver


def recipe_result(meta: dict, args, budget_s: float, cpu: dict) -> dict | None:
    """The cached recipe result, or a fresh one (cached) when ``recipe`` is among the sides."""
    path = cache_path("recipe", meta["name"], budget_s, args.threads, cpu)
    if path.is_file() and not args.refresh:
        result = json.loads(path.read_text())
        print(f"recipe {meta['name']}: from cache {path.relative_to(HERE.parent)}")
        return result
    if "recipe" not in args.sides:
        print(f"recipe {meta['name']}: no cache entry {path.relative_to(HERE.parent)} (run --sides recipe); recipe=nan")
        return None
    result = run_recipe(meta, budget_s, args.threads)
    result.update(
        budget=args.budget,
        budget_s=budget_s,
        threads=args.threads,
        cpu=cpu,
        version=RECIPE_VERSION,
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def describe(result: dict | None) -> str:
    if result is None:
        return "nan"
    return f"{result['dice']:.4f}"


def print_side(result: dict) -> None:
    per_class = ", ".join(f"{k} {v:.4f}" for k, v in result["per_class"].items())
    print(
        f"{result['side']} {result['dataset']}: mean foreground Dice {result['dice']:.4f}; per class: {per_class}; "
        f"steps {result['steps']}; train wall {result['train_s']} s, test {result['test_s']} s"
    )
    print(
        f"{result['side']} {result['dataset']} json: "
        + json.dumps({k: result[k] for k in ("dataset", "side", "dice", "per_class", "steps", "train_s", "test_s")})
    )


def one_dataset(folder: Path, args, budget_s: float, cpu: dict, work: Path) -> None:
    meta = dataset_meta(folder)
    fg = [meta["classes"][i] for i in foreground_classes(meta["classes"])]
    print(
        f"dataset {meta['name']}: {len(meta['train'])} train / {len(meta['test'])} test images; classes "
        f"{meta['classes']}; scored: {fg}",
        flush=True,
    )
    recipe = recipe_result(meta, args, budget_s, cpu)
    if recipe is not None:
        print_side(recipe)
    plan = None
    if "plan" in args.sides:
        plan = run_plan(meta, folder, args.budget, args.threads, work)
        plan.update(budget=args.budget, threads=args.threads, cpu=cpu, date=time.strftime("%Y-%m-%d %H:%M:%S"))
        out = cache_path("plan", meta["name"], budget_s, args.threads, cpu)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plan, indent=1) + "\n")
        print_side(plan)
    print(
        f"RESULT recipe_vs_plan dataset={meta['name']} budget={args.budget} recipe={describe(recipe)} "
        f"plan={describe(plan)}",
        flush=True,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="15m", help="training wall-clock budget per side (s, m or h; default 15m)")
    ap.add_argument(
        "--datasets", default=None, help="comma-separated names (default: every folder with a dataset.json)"
    )
    ap.add_argument("--shared", default=str(SHARED), help=f"datasets folder (default {SHARED})")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of both sides (default 2)")
    ap.add_argument("--sides", default="recipe,plan", help="recipe,plan (default), recipe or plan")
    ap.add_argument("--refresh", action="store_true", help="ignore the recipe cache (and overwrite it)")
    ap.add_argument("--work", default=None, help="folder for the plan side's runs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the --work folder (always kept when --work is given)")
    args = ap.parse_args(argv)
    args.sides = {s.strip() for s in args.sides.split(",") if s.strip()}
    if not args.sides or not args.sides <= {"recipe", "plan"}:
        ap.error("--sides: recipe, plan or recipe,plan")
    budget_s = parse_budget(args.budget)
    cpu = cpu_info()
    print(
        f"cpu: {cpu['model']}; "
        + ", ".join(f"{f} {'present' if cpu[f] else 'absent'}" for f in BF16_FLAGS)
        + f"; threads {args.threads}; budget {args.budget} ({budget_s:g} s); sides {','.join(sorted(args.sides))}"
    )
    folders = find_datasets(Path(args.shared), args.datasets)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="biomedseg_recipe_vs_plan_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for folder in folders:
            one_dataset(folder, args, budget_s, cpu, work)
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"runs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
