"""The training loop: short, with behaviour passed in as objects.

One epoch = ``iterations_per_epoch`` steps on random patches, then validation of whole images by
sliding window. The loop stops after ``epochs`` or when the time budget would be exceeded by one
more step plus the final validation, keeping the best checkpoint (by mean foreground Dice).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biomedseg.data.datasets import PatchSampler, Prefetcher
from biomedseg.engine.defaults import inference_batch_size
from biomedseg.engine.sliding_window import SlidingWindowPredictor, autocast_context
from biomedseg.metrics import MetricAccumulator
from biomedseg.models.heads import find_classifier, foreground_present
from biomedseg.runs import save_checkpoint
from biomedseg.training.distributed import DistInfo, barrier, broadcast_flag
from biomedseg.training.logger import RunLogger

log = logging.getLogger("biomedseg")


@dataclass
class TrainState:
    """Counters that a resumed run continues from."""

    epoch: int = 0
    iteration: int = 0
    elapsed: float = 0.0  # training seconds spent so far (all sessions)
    best_score: float = -1.0
    best_epoch: int = 0
    history: list = field(default_factory=list)


def plain_module(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` without its ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


class Trainer:
    """Runs the optimisation; ``fit()`` returns the final :class:`TrainState`.

    Args:
        model: network producing ``(N, K, H, W)`` logits (already on ``device``).
        loss_fn: ``(logits, target (N, H, W) int64) -> scalar``.
        make_sampler: ``epoch -> PatchSampler`` (seeded by epoch, so resume is exact).
        val_samples: cached validation images (whole images).
        normalizer: maps ``(H, W, C)`` raw images to ``(C, H, W) float32``.

    A model with an image-level head (:mod:`biomedseg.models.heads`) also learns "the patch
    contains foreground": ``cfg.classifier_loss_weight * BCEWithLogits(class_logits, any(y !=
    background))`` is added to the loss; the epoch rows then hold ``train_cls_loss`` and
    ``val_cls_acc`` (share of validation images whose head decision at 0.5 is right).
    """

    def __init__(self, cfg, model, loss_fn, optimizer, schedule, make_sampler, val_samples,
                 normalizer, n_classes, class_names, background, run_dir: Path, device, precision,
                 iterations_per_epoch: int, dist_info: DistInfo | None = None, quiet: bool = False):
        self.cfg, self.model, self.loss_fn = cfg, model, loss_fn
        self.optimizer, self.schedule = optimizer, schedule
        self.make_sampler = make_sampler
        self.val_samples = val_samples
        self.normalizer = normalizer
        self.n_classes, self.class_names, self.background = n_classes, class_names, background
        self.run_dir, self.device, self.precision = Path(run_dir), device, precision
        self.ipe = iterations_per_epoch
        self.dist = dist_info or DistInfo()
        self.is_main, self.quiet = self.dist.is_main, quiet
        self.checkpoints_written = 0
        self.scaler = torch.amp.GradScaler("cuda") if (precision == "fp16" and device.type == "cuda") else None
        from biomedseg.device import use_channels_last

        self.channels_last = use_channels_last(cfg.channels_last, device)
        self.budget = cfg.time_budget
        self.total_iters = cfg.epochs * self.ipe if cfg.epochs else None
        self.net = plain_module(model)  # what checkpoints hold and validation runs (no DDP/compile wrapper)
        self.head_model = find_classifier(self.net)  # the module holding .class_logits, or None
        self.has_head = self.head_model is not None
        self.last_step: dict[str, float] = {}  # loss terms of the latest train_step (seg_loss, cls_loss)
        self.compile_pending = isinstance(getattr(model, "_orig_mod", None), torch.nn.Module)

    # -- progress of the schedule ---------------------------------------------------------
    def progress(self, state: TrainState) -> float:
        ps = []
        if self.total_iters:
            ps.append(state.iteration / self.total_iters)
        if self.budget:
            ps.append(state.elapsed / self.budget)
        return min(1.0, max(ps)) if ps else 0.0

    # -- one optimisation step --------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimisation step on ``x (N, C, H, W) float32``, ``y (N, H, W) int64``; returns the loss.

        A ``torch.compile``-d model compiles on its first step; if that fails (no working C++
        compiler, an unsupported operator), training goes on with the uncompiled model.
        """
        if not self.compile_pending:
            return self._step(x, y)
        try:
            return self._step(x, y)
        except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, the eager step re-raises real errors
            root = err
            while isinstance(getattr(root, "inner_exception", None) or root.__cause__, BaseException):
                root = getattr(root, "inner_exception", None) or root.__cause__  # the compiler's own error
            why = f"{type(root).__name__}: {(str(root).strip().splitlines() or [''])[0][:200]}"
            log.warning("torch.compile failed on the first step (%s); training without it", why)
            self.model = self.model._orig_mod
            self.optimizer.zero_grad(set_to_none=True)
            return self._step(x, y)
        finally:
            self.compile_pending = False

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.precision):
            logits = self.model(x)
        if isinstance(logits, (list, tuple)):  # deep supervision: weighted heads, full-res first
            weights = [0.5**i for i in range(len(logits))]
            loss = sum(w * self.loss_fn(l.float(), y) for w, l in zip(weights, logits)) / sum(weights)
        else:
            loss = self.loss_fn(logits.float(), y)
        terms = {"seg_loss": loss.detach()}
        if self.has_head:  # image-level head: "this patch contains foreground", same forward pass
            class_logits = self.head_model.class_logits
            cls_loss = F.binary_cross_entropy_with_logits(class_logits.float(), foreground_present(y, self.background))
            loss = loss + self.cfg.classifier_loss_weight * cls_loss
            terms["cls_loss"] = cls_loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
        total = float(loss.detach())
        self.last_step = {k: float(v) for k, v in terms.items()}  # after the sync above: no extra stall
        return total

    # -- validation on whole images -------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        predictor = SlidingWindowPredictor(
            self.net, self.cfg.patch_size, overlap=self.cfg.overlap,
            batch_size=inference_batch_size(self.cfg.batch_size),
            device=self.device, precision=self.precision, channels_last=self.channels_last,
        )
        acc = MetricAccumulator(self.n_classes, self.class_names, self.background)
        losses, cls_right = [], []
        for s in self.val_samples:
            logits = predictor.predict_logits(self.normalizer(s.image))
            target = torch.from_numpy(s.mask.astype(np.int64))
            losses.append(float(self.loss_fn(logits[None], target[None])))
            acc.update(logits.argmax(0).numpy().astype(np.uint8), s.mask, image_id=s.id)
            if predictor.last_image_probability is not None:
                truth = bool(foreground_present(target[None], self.background)[0])
                cls_right.append((predictor.last_image_probability >= 0.5) == truth)
        summary = acc.summary()
        summary["loss"] = float(np.mean(losses)) if losses else float("nan")
        if cls_right:
            summary["cls_acc"] = float(np.mean(cls_right))
        return summary

    def _fg_counts(self, summary: dict, key: str) -> float:
        fg = [n for i, n in enumerate(self.class_names) if i != self.background]
        return float(sum(summary["per_class"][n][key] for n in fg))

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self, state: TrainState) -> dict:
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": state.epoch,
            "iteration": state.iteration,
            "elapsed": state.elapsed,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "torch_rng": torch.get_rng_state(),
            "schedule": self.schedule.state_dict(),
        }

    # -- the loop -------------------------------------------------------------------------
    def fit(self, state: TrainState | None = None, logger: RunLogger | None = None) -> TrainState:
        from tqdm.auto import tqdm

        state = state or TrainState()
        ckpt_dir = self.run_dir / "checkpoints"
        val_cost = 0.0  # seconds one validation took (measured)
        step_cost = 0.0  # seconds per step (running estimate)
        total = self.total_iters if self.total_iters else int(self.budget or 0)
        bar = tqdm(total=total, initial=min(total, state.iteration if self.total_iters else int(state.elapsed)),
                   unit="it" if self.total_iters else "s", disable=True if (self.quiet or not self.is_main) else None,
                   dynamic_ncols=True, leave=False, file=sys.stderr)
        last_val = {}
        stop = False
        # wall clock: everything (sampling waits, validation, checkpoints) counts against the budget
        session_start, elapsed_before = time.perf_counter(), state.elapsed

        def tick() -> None:
            state.elapsed = elapsed_before + (time.perf_counter() - session_start)

        while not stop:
            if self.cfg.epochs and state.epoch >= self.cfg.epochs:
                break
            sampler: PatchSampler = self.make_sampler(state.epoch)
            prefetch = Prefetcher(sampler, self.cfg.batch_size, pin_memory=self.device.type == "cuda")
            t_epoch, losses, n_images, data_wait = time.perf_counter(), [], 0, 0.0
            cls_losses = []
            try:
                for _ in range(self.ipe):
                    if self.budget:  # rank 0's clock decides for every rank
                        tick()
                        out_of_time = state.elapsed + 2 * step_cost + val_cost * 1.5 >= self.budget and state.iteration > 0
                        if broadcast_flag(out_of_time, self.dist):
                            stop = True
                            break
                    t0 = time.perf_counter()
                    lr = self.schedule.step(self.progress(state))
                    t_data = time.perf_counter()
                    xb, yb = prefetch.next()
                    data_wait += time.perf_counter() - t_data
                    x = xb.to(self.device, non_blocking=True)  # pinned on CUDA: the copy overlaps compute
                    y = yb.to(self.device, non_blocking=True)
                    losses.append(self.train_step(x, y))
                    if "cls_loss" in self.last_step:
                        cls_losses.append(self.last_step["cls_loss"])
                    n_images += len(xb)
                    dt = time.perf_counter() - t0
                    step_cost = dt if step_cost == 0 else 0.9 * step_cost + 0.1 * dt
                    state.iteration += 1
                    tick()
                    bar.update(1 if self.total_iters else int(state.elapsed) - bar.n)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", val_dice=f"{last_val.get('dice', float('nan')):.3f}")
            finally:
                prefetch.close()
            if not losses:
                break
            state.epoch += 1
            train_seconds = time.perf_counter() - t_epoch
            do_val = self.is_main and bool(self.val_samples) and (
                state.epoch % self.cfg.val_every == 0 or stop or (self.cfg.epochs and state.epoch >= self.cfg.epochs))
            row = {"epoch": state.epoch, "iteration": state.iteration, "train_loss": float(np.mean(losses)),
                   "lr": lr, "images_per_s": n_images / max(train_seconds, 1e-9),
                   "data_wait_share": data_wait / max(train_seconds, 1e-9)}
            if cls_losses:
                row["train_cls_loss"] = float(np.mean(cls_losses))
            if do_val:
                t0 = time.perf_counter()
                last_val = self.validate()
                self.schedule.observe(last_val["dice"])  # only the plateau schedule reacts
                val_cost = time.perf_counter() - t0
                tick()
                row.update({"val_loss": last_val["loss"], "val_dice": last_val["dice"], "val_iou": last_val["iou"],
                            "val_precision": last_val["precision"], "val_recall": last_val["recall"],
                            "val_f1": last_val["f1"], "val_fp": self._fg_counts(last_val, "fp"),
                            "val_fn": self._fg_counts(last_val, "fn")})
                for name, d in last_val["per_class"].items():
                    row[f"val_dice_{name}"] = d["dice"]
                if "cls_acc" in last_val:
                    row["val_cls_acc"] = last_val["cls_acc"]
            tick()
            row["seconds"] = state.elapsed
            if self.is_main:
                improved = do_val and last_val["dice"] > state.best_score
                if improved or (not self.val_samples):
                    state.best_score = last_val.get("dice", state.best_score) if do_val else state.best_score
                    state.best_epoch = state.epoch
                    save_checkpoint(ckpt_dir / "best.pt", self.checkpoint_state(state))
                    self.checkpoints_written += 1
                save_checkpoint(ckpt_dir / "last.pt", self.checkpoint_state(state))
                self.checkpoints_written += 1
                if logger is not None:
                    logger.log(row)
                if not self.quiet:
                    msg = f"epoch {state.epoch}: loss {row['train_loss']:.4f}"
                    if do_val:
                        msg += f", val dice {last_val['dice']:.4f} (best {state.best_score:.4f} @ {state.best_epoch})"
                    bar.write(msg + f", {state.elapsed:.0f}s")
            barrier(self.dist)  # other ranks wait while rank 0 validates and writes
            tick()
            if self.budget and broadcast_flag(state.elapsed + 2 * step_cost + val_cost * 1.5 >= self.budget, self.dist):
                stop = True
        bar.close()
        return state
