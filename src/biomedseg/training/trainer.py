"""The training loop: short, with behaviour passed in as objects.

One epoch = ``iterations_per_epoch`` steps on random patches, then validation of whole images by
sliding window. The loop stops after ``epochs`` or when the time budget would be exceeded by one
more step plus the final validation, keeping the best checkpoint (by mean foreground Dice, or
the rule of ``select``: :mod:`biomedseg.training.selection`). With ``ema``, validation and the
checkpoints' ``"model"`` use the moving average of the weights (:mod:`biomedseg.training.ema`).

A step whose loss (or, without a GradScaler, gradient norm) is not finite is skipped: no
optimizer update, the learning rate is halved and a one-line warning names the epoch and step.
After ``MAX_NONFINITE_STEPS`` such steps in a row, or when the weights themselves stop being
finite, training stops with :class:`TrainingDiverged` (a :class:`UserError`, exit 2); checkpoints
are written only with finite weights, so ``best.pt``/``last.pt`` stay the last good ones.
"""

from __future__ import annotations

import errno
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biomedseg.core.errors import UserError
from biomedseg.engine.sliding_window import autocast_context
from biomedseg.models.heads import find_classifier, foreground_present
from biomedseg.runs import RunPaths, save_checkpoint
from biomedseg.training.distributed import DistInfo, any_rank, barrier, broadcast_flag
from biomedseg.training.ema import checkpoint_weights, make_weight_average, restore_weights
from biomedseg.training.loader import BatchLoader, BatchSource
from biomedseg.training.logger import RunLogger
from biomedseg.training.loop_state import Clock, EpochTally, TrainState
from biomedseg.training.selection import choose_best
from biomedseg.training.validation import val_columns, validate_images

log = logging.getLogger("biomedseg")

#: Non-finite steps in a row (each one already halved the learning rate) after which training stops.
MAX_NONFINITE_STEPS = 3
#: Factor on the learning rate after each non-finite step.
LR_BACKOFF = 0.5


class TrainingDiverged(UserError):
    """Training produced non-finite losses or weights and could not recover (exit code 2)."""


def plain_module(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` without its ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def weights_finite(module: torch.nn.Module) -> bool:
    """Every floating-point parameter and buffer of ``module`` is finite."""
    return all(
        bool(torch.isfinite(t).all())
        for t in module.state_dict().values()
        if torch.is_tensor(t) and t.is_floating_point()
    )


class Trainer:
    """Runs the optimisation; ``fit()`` returns the final :class:`TrainState`.

    Args:
        model: network producing ``(N, K, H, W)`` logits (already on ``device``).
        loss_fn: ``(logits, target (N, H, W) int64) -> scalar``.
        batches: the training batches by ``(epoch, step)`` (:class:`~biomedseg.training.loader.BatchSource`:
            every batch has its own seeded generator, so resume is exact), made by a background
            thread or ``cfg.num_workers`` worker processes (:func:`~biomedseg.runtime.device.loader_workers`).
        val_samples: cached validation images (whole images).
        normalizer: maps ``(H, W, C)`` raw images to ``(C, H, W) float32``.

    A model with an image-level head (:mod:`biomedseg.models.heads`) also learns "the patch
    contains foreground": ``cfg.classifier_loss_weight * BCEWithLogits(class_logits, any(y !=
    background))`` is added to the loss; the epoch rows then hold ``train_cls_loss`` and
    ``val_cls_acc`` (share of validation images whose head decision at 0.5 is right).

    ``on_epoch(epoch, row) -> bool``: called (rank 0) after each validated epoch, once its row is
    logged and its checkpoints written; ``True`` stops training there (``stopped_early`` is set),
    e.g. a sweep pruning an unpromising trial.
    """

    def __init__(
        self,
        cfg,
        model,
        loss_fn,
        optimizer,
        schedule,
        batches: BatchSource | None,
        val_samples,
        normalizer,
        n_classes,
        class_names,
        background,
        run_dir: Path,
        device,
        precision,
        iterations_per_epoch: int,
        dist_info: DistInfo | None = None,
        quiet: bool = False,
        on_epoch=None,
    ):
        self.cfg, self.model, self.loss_fn = cfg, model, loss_fn
        self.optimizer, self.schedule = optimizer, schedule
        self.batches = batches
        from biomedseg.runtime.device import loader_workers

        self.num_workers = loader_workers(cfg.num_workers, device)
        self.loader: BatchLoader | None = None  # made by fit(), its worker processes stopped at its end
        self.val_samples = val_samples
        self.normalizer = normalizer
        self.n_classes, self.class_names, self.background = n_classes, class_names, background
        self.run_dir, self.device, self.precision = Path(run_dir), device, precision
        self.ipe = iterations_per_epoch
        self.dist = dist_info or DistInfo()
        self.is_main, self.quiet = self.dist.is_main, quiet
        self.checkpoints_written = 0
        self.scaler = torch.amp.GradScaler("cuda") if (precision == "fp16" and device.type == "cuda") else None
        from biomedseg.runtime.device import use_channels_last

        self.channels_last = use_channels_last(cfg.channels_last, device)
        self.budget = cfg.time_budget
        self.total_iters = cfg.epochs * self.ipe if cfg.epochs else None
        self.net = plain_module(model)  # what checkpoints hold and validation runs (no DDP/compile wrapper)
        self.ema = make_weight_average(cfg.ema, self.net)  # its average replaces net for validation and checkpoints
        self.head_model = find_classifier(self.net)  # the module holding .class_logits, or None
        self.has_head = self.head_model is not None
        self.last_step: dict[str, float] = {}  # loss terms of the latest train_step (seg_loss, cls_loss)
        self.step_finite = True  # the latest train_step updated the weights (its loss was finite on every rank)
        self.nonfinite_run = 0  # non-finite steps in a row
        self.saved_epoch: int | None = None  # epoch of the latest checkpoints/last.pt
        self.last_val: dict = {}
        self.compile_pending = isinstance(getattr(model, "_orig_mod", None), torch.nn.Module)
        self.on_epoch = on_epoch
        self.stopped_early = False  # on_epoch asked to stop

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
        ``self.step_finite`` tells whether the step updated the weights.
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

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Forward pass: the total loss and its detached terms (``seg_loss``, ``cls_loss``)."""
        with autocast_context(self.device, self.precision):
            logits = self.model(x)
        if isinstance(logits, (list, tuple)):  # deep supervision: weighted heads, full-res first
            weights = [0.5**i for i in range(len(logits))]
            loss = sum(w * self.loss_fn(head.float(), y) for w, head in zip(weights, logits)) / sum(weights)
        else:
            loss = self.loss_fn(logits.float(), y)
        terms = {"seg_loss": loss.detach()}
        if self.has_head:  # image-level head: "this patch contains foreground", same forward pass
            class_logits = self.head_model.class_logits
            cls_loss = F.binary_cross_entropy_with_logits(class_logits.float(), foreground_present(y, self.background))
            loss = loss + self.cfg.classifier_loss_weight * cls_loss
            terms["cls_loss"] = cls_loss.detach()
        return loss, terms

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, terms = self._loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        # with a GradScaler, infinite gradients of a finite loss are its own skipped steps (the scale
        # shrinks), not divergence: only the loss counts there
        watched = loss.detach() if self.scaler is not None else torch.stack([loss.detach(), grad_norm.float()])
        self.step_finite = not any_rank(not bool(torch.isfinite(watched).all()), self.dist)  # every rank skips together
        if self.scaler is not None:
            if self.step_finite:
                self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.step_finite:
            self.optimizer.step()
        total = float(loss.detach())
        self.last_step = {k: float(v) for k, v in terms.items()}  # after the sync above: no extra stall
        return total

    def _skipped_step(self, state: TrainState, step: int) -> None:
        """After a non-finite step: halve the learning rate and warn, or stop after too many in a row."""
        self.nonfinite_run += 1
        where = f"epoch {state.epoch + 1}, step {step}"
        if self.nonfinite_run >= MAX_NONFINITE_STEPS:
            raise TrainingDiverged(
                self._diverged_message(
                    f"{self.nonfinite_run} non-finite losses in a row "
                    f"(the last at {where}) although the learning rate was "
                    f"halved after each"
                )
            )
        self.schedule.back_off(LR_BACKOFF)
        lr = self.schedule.step(self.progress(state))
        if self.is_main:
            log.warning("%s: non-finite loss; step skipped, learning rate lowered to %.3g", where, lr)

    def _diverged_message(self, what: str) -> str:
        fix = f"lower the learning rate (--lr, set to {self.cfg.lr:g})"
        if self.precision != "fp32":
            fix += f" or train in fp32 (--precision fp32 instead of {self.precision})"
        kept = (
            f"checkpoints/last.pt of epoch {self.saved_epoch} is the last good checkpoint"
            if self.saved_epoch
            else "no checkpoint was written"
        )
        return f"{self.run_dir}: training diverged: {what}; {fix}; {kept}"

    # -- validation on whole images -------------------------------------------------------
    def validate(self) -> dict:
        net = self.ema.module if self.ema is not None else self.net  # the moving average when there is one
        return validate_images(
            net,
            self.cfg,
            self.val_samples,
            self.normalizer,
            self.loss_fn,
            self.n_classes,
            self.class_names,
            self.background,
            self.device,
            self.precision,
            self.channels_last,
        )

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self, state: TrainState) -> dict:
        return {
            **checkpoint_weights(self.net, self.ema),  # "model" (and "ema": the trained weights)
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": state.epoch,
            "iteration": state.iteration,
            "elapsed": state.elapsed,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "val_scores": list(state.val_scores),
            "torch_rng": torch.get_rng_state(),
            "schedule": self.schedule.state_dict(),
        }

    def restore(self, ck: dict) -> TrainState:
        """Continue from ``ck`` (a :meth:`checkpoint_state` dict, e.g. ``last.pt``): load the model,
        optimizer, schedule, GradScaler (when both have one) and torch RNG; returns the counters."""
        restore_weights(ck, self.net, self.ema)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck.get("schedule", {}))
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["torch_rng"])
        self.saved_epoch = ck["epoch"]
        return TrainState(
            epoch=ck["epoch"],
            iteration=ck["iteration"],
            elapsed=ck["elapsed"],
            best_score=ck["best_score"],
            best_epoch=ck["best_epoch"],
            val_scores=list(ck.get("val_scores", [])),
        )

    def _save(self, name: str, state: TrainState) -> None:
        path = RunPaths(self.run_dir).checkpoint(name)
        try:
            save_checkpoint(path, self.checkpoint_state(state))
        except RuntimeError as exc:  # torch's file writer reports a failed write (a full disk) this way
            raise OSError(errno.EIO, f"cannot write checkpoint ({str(exc).splitlines()[0][:200]})", str(path)) from exc
        self.checkpoints_written += 1

    def _check_weights(self, state: TrainState) -> None:
        """Stop before any checkpoint is written when the weights are no longer finite (every rank
        checks its own replica: they are equal under DDP, so all ranks stop together)."""
        if not (weights_finite(self.net) and (self.ema is None or weights_finite(self.ema.module))):
            raise TrainingDiverged(self._diverged_message(f"the weights became non-finite in epoch {state.epoch}"))

    # -- the loop -------------------------------------------------------------------------
    def fit(self, state: TrainState | None = None, logger: RunLogger | None = None) -> TrainState:
        state = state or TrainState()
        self.saved_epoch = self.saved_epoch or state.epoch or None
        clock = Clock(state.elapsed)
        bar = self._progress_bar(state)
        self.loader = BatchLoader(self.batches, self.num_workers, pin_memory=self.device.type == "cuda")
        try:
            while not (self.cfg.epochs and state.epoch >= self.cfg.epochs):
                ep = self._train_epoch(state, clock, bar)
                if not ep.steps:
                    break
                state.epoch += 1
                row, validated = self._epoch_row(state, ep, clock)
                self._check_weights(state)
                if self.is_main:
                    self._save_and_log(state, row, validated, logger, bar)
                barrier(self.dist)  # other ranks wait while rank 0 validates and writes
                clock.tick(state)
                if self._stop_requested(state, row, validated):
                    break
                if ep.stop or (self.budget and broadcast_flag(clock.near_budget(state, self.budget), self.dist)):
                    break
        finally:
            bar.close()
            self.loader.close()
        return state

    def _stop_requested(self, state: TrainState, row: dict, validated: bool) -> bool:
        """``on_epoch`` (rank 0, validated epochs) asked to stop; every rank gets the answer."""
        if self.on_epoch is None:
            return False
        stop = bool(self.is_main and validated and self.on_epoch(state.epoch, row))
        self.stopped_early = broadcast_flag(stop, self.dist)
        return self.stopped_early

    def _progress_bar(self, state: TrainState):
        from tqdm.auto import tqdm

        total = self.total_iters if self.total_iters else int(self.budget or 0)
        return tqdm(
            total=total,
            initial=min(total, state.iteration if self.total_iters else int(state.elapsed)),
            unit="it" if self.total_iters else "s",
            disable=True if (self.quiet or not self.is_main) else None,
            dynamic_ncols=True,
            leave=False,
            file=sys.stderr,
        )

    def _train_epoch(self, state: TrainState, clock: Clock, bar) -> EpochTally:
        """The steps of one epoch (fewer when the time budget runs out)."""
        ep = EpochTally()
        prefetch = self.loader.epoch(state.epoch, self.ipe)
        try:
            for i in range(self.ipe):
                if self.budget:  # rank 0's clock decides for every rank
                    clock.tick(state)
                    if broadcast_flag(clock.near_budget(state, self.budget) and state.iteration > 0, self.dist):
                        ep.stop = True
                        break
                t0 = time.perf_counter()
                self._timed_step(state, ep, prefetch, i + 1)
                clock.step_took(time.perf_counter() - t0)
                state.iteration += 1
                clock.tick(state)
                bar.update(1 if self.total_iters else int(state.elapsed) - bar.n)
                bar.set_postfix(
                    loss=f"{ep.losses[-1] if ep.losses else math.nan:.3f}",
                    val_dice=f"{self.last_val.get('dice', math.nan):.3f}",
                )
        finally:
            prefetch.close()
        return ep

    def _timed_step(self, state: TrainState, ep: EpochTally, prefetch, step: int) -> None:
        ep.lr = self.schedule.step(self.progress(state))
        t_data = time.perf_counter()
        xb, yb = prefetch.next()
        ep.data_wait += time.perf_counter() - t_data
        x = xb.to(self.device, non_blocking=True)  # pinned on CUDA: the copy overlaps compute
        y = yb.to(self.device, non_blocking=True)
        loss = self.train_step(x, y)
        ep.steps += 1
        ep.n_images += len(xb)
        if not self.step_finite:
            ep.skipped += 1
            self._skipped_step(state, step)
            return
        self.nonfinite_run = 0
        if self.ema is not None:
            self.ema.update(state.iteration + 1, self.progress(state))
        ep.losses.append(loss)
        if "cls_loss" in self.last_step:
            ep.cls_losses.append(self.last_step["cls_loss"])

    def _epoch_row(self, state: TrainState, ep: EpochTally, clock: Clock) -> tuple[dict, bool]:
        """The epoch's ``metrics.csv`` row (validating when due) and whether it validated."""
        train_seconds = time.perf_counter() - ep.start
        validate = (
            self.is_main
            and bool(self.val_samples)
            and (
                state.epoch % self.cfg.val_every == 0
                or ep.stop
                or bool(self.cfg.epochs and state.epoch >= self.cfg.epochs)
            )
        )
        row = {
            "epoch": state.epoch,
            "iteration": state.iteration,
            "train_loss": float(np.mean(ep.losses)) if ep.losses else math.nan,
            "lr": ep.lr,
            "images_per_s": ep.n_images / max(train_seconds, 1e-9),
            "data_wait_share": ep.data_wait / max(train_seconds, 1e-9),
        }
        if ep.cls_losses:
            row["train_cls_loss"] = float(np.mean(ep.cls_losses))
        if ep.skipped:
            row["skipped_steps"] = ep.skipped
        if validate:
            t0 = time.perf_counter()
            self.last_val = self.validate()
            self.schedule.observe(self.last_val["dice"])  # only the plateau schedule reacts
            clock.val_cost = time.perf_counter() - t0
            row.update(val_columns(self.last_val, self.class_names, self.background))
        clock.tick(state)
        row["seconds"] = state.elapsed
        return row, validate

    def _save_and_log(self, state: TrainState, row: dict, validated: bool, logger: RunLogger | None, bar) -> None:
        """Rank 0: the ``metrics.csv`` row, ``best.pt`` when ``select``'s score improved (every epoch
        without validation images), ``last.pt`` always, and the progress line.

        The row goes first: a run killed between the two resumes from the older ``last.pt`` and
        drops the extra row (``RunLogger.truncate``), whereas the other order would lose a row."""
        if logger is not None:
            logger.log(row)
        if choose_best(state, self.cfg.select, self.last_val["dice"] if validated else None, bool(self.val_samples)):
            self._save("best", state)
        self._save("last", state)
        self.saved_epoch = state.epoch
        if not self.quiet:
            msg = f"epoch {state.epoch}: loss {row['train_loss']:.4f}"
            if validated:
                msg += f", val dice {self.last_val['dice']:.4f} (best {state.best_score:.4f} @ {state.best_epoch})"
            bar.write(msg + f", {state.elapsed:.0f}s")
