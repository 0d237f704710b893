"""``train --init SOURCE``: a new run that starts from the weights of a trained one.

Unlike ``--resume`` (the same run, its optimiser, schedule and epoch counter), ``--init`` starts a
*new* run (new data, more data, other classes) whose network begins where the source ended:

- the source is a run folder (``checkpoints/best.pt``, else ``last.pt``) or a cross-validation folder
  (the fold with the best out-of-fold Dice). Exported files (``.onnx``, ``.pt``, ``.zip``) are refused:
  they hold a graph for prediction, not the training state; start from the run they came from.
- carried over: the architecture and its width/depth (``model``, ``model_kwargs``), the normalisation
  unless the new images' intensities differ (:func:`choose_normalizer`), and the working scale when
  the pixel size matches (:func:`init_settings`). Each is a ``plan.yaml`` entry with its reason.
- classes are matched by name: a kept class keeps its output weights bit for bit, a new class starts
  from the fresh initialisation, a dropped class is left out (:func:`adapt_state`). A grey source on
  RGB data (or the reverse) has its first layer adapted, with a warning.
- a fine-tune learns at the source's learning rate times :data:`FINETUNE_LR_FACTOR` after a warm-up
  of :data:`FINETUNE_WARMUP_FRACTION` of the steps, with a fresh optimiser.

``RUN/run.json`` records the parent (:meth:`InitSource.lineage`: path, run name, checkpoint and the
checkpoint's SHA-256) so a lineage can be followed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.models.pretrained import sha256_of
from biomedseg.runs import DatasetInfo, RunFolder, load_checkpoint, open_run

log = logging.getLogger("biomedseg")

#: learning rate of a fine-tune, as a fraction of the source run's (benchmarks/finetune.py)
FINETUNE_LR_FACTOR = 0.2
#: warm-up of a fine-tune (fraction of its steps): the new output channels and a fresh optimiser
#: state should not take full steps at once
FINETUNE_WARMUP_FRACTION = 0.1
#: intensities of the new images differ from the source's when a channel mean moves by more than this
#: many source standard deviations, or a standard deviation changes by more than this factor
NORM_MEAN_SHIFT = 0.5
NORM_STD_RATIO = 1.5
INIT_REASON = "kept from the --init run"
EXPORT_SUFFIXES = (".onnx", ".pt", ".zip")


@dataclass
class InitSource:
    """A resolved ``--init``: the run, its checkpoint and what it was trained on."""

    run: RunFolder
    checkpoint: Path
    sha256: str
    config: dict
    info: DatasetInfo
    origin: str  # "run" or "fold 2 of CV (best out-of-fold Dice 0.871)"

    @property
    def name(self) -> str:
        return self.run.root.name

    def lineage(self) -> dict:
        """The ``parent`` entry of ``run.json``."""
        return {
            "run": self.name,
            "path": str(self.run.root.resolve()),
            "origin": self.origin,
            "checkpoint": self.checkpoint.name,
            "sha256": self.sha256,
        }


def _best_fold(path: Path) -> tuple[RunFolder, str]:
    from biomedseg.runs.cv import DONE, TRAINED, open_cv

    cv = open_cv(path)
    scored = []
    for i in range(cv.n_folds()):
        if cv.fold_state(i) not in (TRAINED, DONE) or not cv.fold(i).has_checkpoint("best"):
            continue
        dice = (cv.fold_record(i).get("scores") or {}).get("dice")
        scored.append((-1.0 if dice is None else float(dice), i))
    if not scored:
        raise UserError(f"{path}: a cross-validation folder with no trained fold; run `biomedseg cv` first")
    dice, i = max(scored)
    why = f"best out-of-fold Dice {dice:.3f}" if dice >= 0 else "no out-of-fold scores yet: the first trained fold"
    return cv.fold(i), f"fold {i} of CV {path.name} ({why})"


def resolve_init(path) -> InitSource:
    """The run an ``--init`` names, with its checkpoint loaded once to check it (one-line
    :class:`UserError` for an exported file, a folder that is not a run, an ensemble or sweep folder,
    or a checkpoint that does not load)."""
    from biomedseg.runs.cv import is_cv

    p = Path(path)
    if p.is_file() and p.suffix.lower() in EXPORT_SUFFIXES:
        raise UserError(
            f"{p}: an exported file holds a graph for prediction, not training weights; --init takes "
            "the run folder (or CV folder) it was exported from"
        )
    if not p.is_dir():
        raise UserError(f"{p}: no such run folder (--init takes a run folder or a cross-validation folder)")
    if is_cv(p):
        run, origin = _best_fold(p)
    else:
        run, origin = open_run(p), "run"
        kind = run.info().kind
        if kind != "run":
            raise UserError(f"{p}: a {kind} folder holds several networks; --init takes one run: name one of them")
    ckpt = run.checkpoint_path("best")
    state = load_checkpoint(ckpt)
    if not isinstance(state.get("model"), dict):
        raise UserError(f"{ckpt}: not a biomedseg checkpoint (no model weights)")
    return InitSource(run, ckpt, sha256_of(ckpt), run.config_values(), run.dataset(), origin)


def _same_pixel_size(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return all(abs(x - y) <= 0.01 * max(abs(x), abs(y)) for x, y in zip(a, b))


def _check_user_choice(source: InitSource, explicit: dict) -> None:
    model = source.config.get("model", "unet")
    if "model" in explicit and explicit["model"] != model:
        raise UserError(
            f"--init {source.run.root}: a {model} run cannot start a {explicit['model']}; leave --model "
            "out (the architecture comes from the source) or train from scratch"
        )
    src_kw = source.config.get("model_kwargs") or {}
    for key, value in (explicit.get("model_kwargs") or {}).items():
        if key in src_kw and src_kw[key] != value and key != "pretrained":
            raise UserError(
                f"--init {source.run.root}: model_kwargs.{key} is {src_kw[key]!r} in the source; "
                f"{value!r} would change the network's shape"
            )


def init_settings(source: InitSource, explicit: dict, pixel_size) -> tuple[dict, dict]:
    """``(config values, plan entries)`` that ``--init`` sets: architecture and width, the fine-tune
    learning rate and warm-up (unless the user set them), the working scale and pixel size when the new
    training images have the source's pixel size. The user's own choices win (and may not change the
    network's shape: one-line :class:`UserError`)."""
    _check_user_choice(source, explicit)
    src = source.config
    kwargs = {k: v for k, v in (src.get("model_kwargs") or {}).items() if k != "pretrained"}
    values = {"model": src.get("model", "unet"), "model_kwargs": kwargs}
    why = f"{INIT_REASON} {source.name}"
    entries = {
        "init": {
            "value": source.name,
            "reason": f"weights of {source.origin}, {source.checkpoint.name} (sha256 {source.sha256[:12]})",
        },
        "model": {"value": values["model"], "reason": why},
    }
    entries.update({f"model_kwargs.{k}": {"value": v, "reason": why} for k, v in kwargs.items()})
    src_lr = float(src.get("lr", 2e-3))
    if "lr" not in explicit:
        values["lr"] = src_lr * FINETUNE_LR_FACTOR
        entries["lr"] = {"value": values["lr"], "reason": f"fine-tune: the source's {src_lr:g} x {FINETUNE_LR_FACTOR}"}
    if "warmup_fraction" not in explicit:
        values["warmup_fraction"] = max(float(src.get("warmup_fraction", 0.0)), FINETUNE_WARMUP_FRACTION)
        entries["warmup_fraction"] = {
            "value": values["warmup_fraction"],
            "reason": "fine-tune: new output channels and a fresh optimiser warm up first",
        }
    if "working_scale" not in explicit and _same_pixel_size(src.get("pixel_size"), pixel_size):
        values["working_scale"] = src.get("working_scale", 1.0)
        values["pixel_size"] = src.get("pixel_size")
        entries["working_scale"] = {
            "value": values["working_scale"],
            "reason": f"{why}: the same pixel size ({pixel_size or 'not stated'})",
        }
    return values, entries


def choose_normalizer(source: InitSource, fitted, channels: int):
    """``(normaliser, reason)``: the source's, unless the channels differ or the new training images'
    statistics (``fitted``) moved (a channel mean by more than :data:`NORM_MEAN_SHIFT` source sds, or a
    sd by more than a factor :data:`NORM_STD_RATIO`): then the new images' own."""
    from biomedseg.transforms.normalize import Normalizer

    old = Normalizer.from_json(source.info.normalization)
    if source.info.channels != channels:
        return fitted, f"re-estimated: {channels} input channels, the source had {source.info.channels}"
    mean_old, sd_old = np.asarray(old.mean), np.asarray(old.std)
    shift = np.abs(np.asarray(fitted.mean) - mean_old) / sd_old
    ratio = np.maximum(np.asarray(fitted.std) / sd_old, sd_old / np.asarray(fitted.std))
    if shift.max() > NORM_MEAN_SHIFT or ratio.max() > NORM_STD_RATIO:
        c = int(np.argmax(np.maximum(shift / NORM_MEAN_SHIFT, ratio / NORM_STD_RATIO)))
        return fitted, (
            f"re-estimated: the new images differ (channel {c}: mean {fitted.mean[c]:.4g} sd "
            f"{fitted.std[c]:.4g} vs {mean_old[c]:.4g} sd {sd_old[c]:.4g} in the source)"
        )
    return old, (
        f"{INIT_REASON} {source.name}: the new images' intensities match it (largest mean shift {shift.max():.2f} sd)"
    )


def load_init_weights(model, source: InitSource, cfg, classes: list[str], channels: int) -> dict:
    """Load ``source``'s weights into ``model`` (built for ``classes`` and ``channels``); returns the
    ``plan.yaml`` entry saying which classes were kept, which start fresh and which were dropped."""
    from biomedseg.models import create_model
    from biomedseg.models.adapt import adapt_state_dict, match_classes, varying_dims

    kwargs = {k: v for k, v in cfg.model_kwargs.items() if k != "pretrained"}

    def build(c: int, k: int):
        return create_model(cfg.model, c, k, **kwargs)

    src_classes = list(source.info.classes)
    pairs = match_classes(src_classes, classes)
    state = load_checkpoint(source.checkpoint)["model"]
    sizes = {"classes": (len(src_classes), len(classes)), "channels": (source.info.channels, channels)}
    new_state = adapt_state_dict(
        state, model.state_dict(), varying_dims(build, channels, len(classes)), pairs, sizes, str(source.checkpoint)
    )
    model.load_state_dict(new_state)
    kept = [classes[j] for j, _ in pairs]
    fresh = [c for j, c in enumerate(classes) if j not in {j for j, _ in pairs}]
    dropped = [c for i, c in enumerate(src_classes) if i not in {s for _, s in pairs}]
    if source.info.channels != channels:
        log.warning(
            "--init %s: trained on %d input channels, the data has %d: first layer adapted (%s)",
            source.name,
            source.info.channels,
            channels,
            "grey weights repeated over the channels / %d" % channels
            if source.info.channels == 1
            else "colour weights summed",
        )
    if not pairs:
        log.warning(
            "--init %s: no class name in common (%s vs %s): every output channel starts fresh",
            source.name,
            ", ".join(src_classes),
            ", ".join(classes),
        )
    reason = f"kept: {', '.join(kept) or 'none'}; new (fresh output weights): {', '.join(fresh) or 'none'}"
    return {"value": kept, "reason": reason + (f"; dropped: {', '.join(dropped)}" if dropped else "")}
