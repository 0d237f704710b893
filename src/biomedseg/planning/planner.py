"""Self-configuration: from a data fingerprint and a compute budget to training choices.

:func:`make_plan` is a pure function: ``fingerprint`` (see :func:`fingerprint_from_samples`) +
budget + device -> ``{option: {"value": v, "reason": "..."}}``. Options the user sets explicitly
(config file or command line) always win over the plan. The rules and the measurements behind
them are logged in ``docs/experiments.md``.
"""

from __future__ import annotations

import math

import numpy as np

from biomedseg.planning.augment import plan_augment
from biomedseg.planning.ensemble import plan_ensemble
from biomedseg.planning.scale import CONTEXT_DIAMETERS, THIN_STRUCTURE_WIDTH, plan_working_scale
from biomedseg.planning.timing import measure_robustly, measure_step_time, step_timer  # noqa: F401
from biomedseg.planning.width_curves import full_width_wins
from biomedseg.transforms.normalize import CLIP_PERCENTILES

#: the planner never narrows a network below this width (channels of the first stage)
MIN_WIDTH = 16
#: pixels per training step on CPU (8 patches of 256x256): larger patches come in smaller batches.
CPU_STEP_PIXELS = 8 * 256 * 256
#: a foreground class below this pixel share is rare: half the patches are centred on foreground,
#: and on CPU patches stay at 256 so that there are 8 of them per step
RARE_CLASS_SHARE = 0.05
#: validation takes at most this share of the training time (``val_every``)
MAX_VAL_SHARE = 0.1
#: CPU budgets from this long compile the training step: ~1 min of compiling buys 1.3-1.6x steps
COMPILE_MIN_BUDGET_S = 600
#: CPU budgets from this long (compiled) give thin structures the full-resolution level: it won at
#: 30 min on ISBI and DRIVE, and was a wash at 10 min (experiments §9)
FULL_RES_MIN_BUDGET_S = 1800


def fingerprint_from_samples(
    samples, n_classes: int, class_names: list[str], background, channels: int, dtype_max: int = 255, pixel_size=None
) -> dict:
    """Data fingerprint of cached training samples (``image (H, W, C)``, ``mask (H, W) uint8``).

    Keys: ``n_images``, ``median_shape`` (h, w), ``min_shape``, ``channels``, ``bit_depth``,
    ``class_share`` (pixel fraction per class), ``image_share`` (fraction of images holding each
    class), ``object_diameter_p90`` per foreground class (pixels, from connected components),
    ``structure_width`` per foreground class (mean width in pixels: its pixels over the pixels
    of its skeleton; about 7 for ISBI membranes, 3 for DRIVE vessels, over 20 for nuclei);
    ``pixel_size`` ``[y, x]`` (µm) when given (known for the images); ``labelled_fraction`` (pixels
    with a class: partial labels leave the rest unlabelled, and every statistic counts labelled pixels only;
    object sizes and widths come from fully labelled images). A foreground class labelled only in partly
    labelled images (scribbles) takes its object sizes from its strokes (:func:`stroke_extents`: a stroke
    lies inside its object, so its length is a lower bound of the object's extent) and has no width;
    ``object_size_source`` names those classes (``"strokes"``).
    """
    from scipy import ndimage
    from skimage.morphology import skeletonize

    shapes = np.array([s.mask.shape for s in samples])
    counts = np.zeros(n_classes, np.int64)
    holders = np.zeros(n_classes, np.int64)
    diam: dict[int, list[float]] = {c: [] for c in range(n_classes)}
    skeleton = np.zeros(n_classes, np.int64)
    whole = np.zeros(n_classes, np.int64)  # pixels of the fully labelled images: object sizes come from them
    strokes: dict[int, list[float]] = {c: [] for c in range(n_classes)}
    for s in samples:
        bc = np.bincount(s.mask.ravel(), minlength=n_classes)[:n_classes]
        counts += bc
        holders += bc > 0
        if bc.sum() < s.mask.size:  # partly labelled (scribbles): only its strokes' extents are known
            for c in range(n_classes):
                if c != background and bc[c]:
                    strokes[c].extend(stroke_extents(s.mask == c))
            continue
        whole += bc
        for c in range(n_classes):
            if c == background or not bc[c]:
                continue
            lab, n = ndimage.label(s.mask == c)
            if bc[c] < s.mask.size:
                skeleton[c] += int(skeletonize(lab > 0).sum())
            if n:
                areas = np.bincount(lab.ravel())[1:]
                diam[c].extend((2 * np.sqrt(areas / np.pi)).tolist())
    from_strokes = [c for c in range(n_classes) if not diam[c] and strokes[c]]
    for c in from_strokes:  # no fully labelled image holds the class: its strokes bound its objects from below
        diam[c] = strokes[c]
    bits = max(8 * s.image.dtype.itemsize for s in samples)  # 8 (uint8), 16 (uint16), 32 (float32)
    fp = {
        "n_images": len(samples),
        "median_shape": [int(v) for v in np.median(shapes, axis=0)],
        "min_shape": [int(v) for v in shapes.min(axis=0)],
        "channels": channels,
        "bit_depth": bits,
        "class_names": class_names,
        "background": background,
        "labelled_fraction": round(float(counts.sum() / max(1, int(np.prod(shapes, axis=1).sum()))), 4),
        "class_share": (counts / max(counts.sum(), 1)).round(5).tolist(),
        "image_share": (holders / max(len(samples), 1)).round(4).tolist(),
        "object_diameter_p90": {class_names[c]: float(np.percentile(v, 90)) for c, v in diam.items() if v},
        "object_diameter_p10": {class_names[c]: float(np.percentile(v, 10)) for c, v in diam.items() if v},
        "structure_width": {
            class_names[c]: round(float(whole[c] / skeleton[c]), 2) for c in range(n_classes) if skeleton[c]
        },
    }
    if from_strokes:
        fp["object_size_source"] = {class_names[c]: "strokes" for c in from_strokes}
    if pixel_size is not None:
        fp["pixel_size"] = [float(v) for v in pixel_size]
    return fp


def stroke_extents(labelled: np.ndarray) -> list[float]:
    """Extents (pixels) of the strokes in ``labelled`` (``(H, W) bool``, one class's labelled pixels of a
    partly labelled mask): the diagonal of each 8-connected component's bounding box, about a stroke's
    length whatever its direction. A stroke drawn inside an object is at most as long as the object is wide
    across, so these are lower bounds of the objects' extents (for a round object, of its diameter less
    its stroke's distance from the rim at both ends)."""
    from scipy import ndimage

    lab, n = ndimage.label(labelled, np.ones((3, 3), bool))
    return [float(np.hypot(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)) for sl in ndimage.find_objects(lab)]


def steps_per_pass(area: float, patch_size: int, batch_size: int) -> int:
    """Steps of ``batch_size`` patches covering ``area`` training pixels once, clamped to [25, 250]."""
    return int(np.clip(round(area / (patch_size**2 * batch_size)), 25, 250))


def _pow2_floor(x: float) -> int:
    return 2 ** int(math.floor(math.log2(max(x, 1))))


def _plan_scale_and_patch(fp: dict, gpu: bool, cap: int, plan: dict) -> tuple[int, float]:
    """The ``pixel_size``, ``working_scale`` and ``patch_size`` entries of ``plan``; returns ``(patch, scale)``."""
    h, w = fp["median_shape"]
    if fp.get("pixel_size"):
        plan["pixel_size"] = {
            "value": fp["pixel_size"],
            "reason": "median pixel size (y, x µm) of the training "
            "images: images of another pixel size are resampled to it (training and prediction)",
        }
    scaled_patch = 512 if gpu else 256  # the patch a shrunk image must fit: 8 per CPU step, 16 per GPU step
    plan["working_scale"] = plan_working_scale(fp, scaled_patch)
    scale = plan["working_scale"]["value"]
    if scale < 1:  # the context did not fit at native resolution: the patch holds it at this scale
        patch = scaled_patch
        whole = max(h, w) * scale <= patch
        why = (
            f"{'whole images' if whole else 'patches'} of {h * scale:.0f}x{w * scale:.0f}px at working scale "
            f"{scale:.3g}" + (" (mirror-padded to the patch: no crop throws context away)" if whole else "")
        )
    else:
        patch, why = _native_patch(fp, cap, gpu)
    plan["patch_size"] = {"value": int(patch), "reason": why}
    return int(patch), scale


def make_plan(
    fp: dict,
    budget_s: float | None,
    device_type: str = "cpu",
    epochs: int | None = None,
    step_time=None,
    model: str = "unet",
    width_option: tuple[str, int] | None = None,
    can_compile: bool = False,
) -> dict:
    """Choose patch size, network size, batch, sampling, loss and schedule for ``fp``.

    ``step_time(patch, batch, depth, width) -> seconds`` measures a training step here (see
    :func:`measure_step_time`; called several times per width, :func:`measure_robustly`, and the
    reason shows the spread); without it the width follows the budget alone. ``model`` and
    ``width_option`` (``(keyword, published default)``, default ``("base_channels", 32)``) name
    the architecture whose width is planned: the default U-Net gets depth and width, other
    architectures keep their published depth and are only narrowed when the budget is too short
    for their published width. ``can_compile``: ``torch.compile`` works here (a C++ compiler is
    present, see :func:`biomedseg.runtime.device.cpp_compiler_available`). Returns
    ``{option: {"value": ..., "reason": "..."}}`` with option names of
    :class:`~biomedseg.runs.config.TrainConfig`.
    """
    plan: dict[str, dict] = {}
    h, w = fp["median_shape"]
    gpu = device_type == "cuda"
    # patch: at least 4 typical objects of context, up to 512 and never above the typical image.
    # On CPU the pixels per step stay at 8 x 256^2 (the step time), so a 512 patch comes in batches
    # of 2: on ISBI (membrane mesh ~270px) 512x2 beat 256x8 at the same step cost. With a class
    # under 5% the cap stays 256: 8 patches, half centred on it, found the rare darkfield
    # spirochaetes better than 2 large ones (0.277 vs 0.216, experiments §6).
    fg = [i for i in range(len(fp["class_share"])) if i != fp.get("background")]
    rare = min((fp["class_share"][i] for i in fg), default=1.0)
    cap = 512 if gpu or rare >= RARE_CLASS_SHARE else 256
    patch, scale = _plan_scale_and_patch(fp, gpu, cap, plan)
    depth = int(min(5, max(3, math.log2(patch / 8) + 1)))
    plan["model_kwargs.depth"] = {
        "value": depth,
        "reason": f"bottleneck of {patch // 2 ** (depth - 1)}px on a {patch}px patch",
    }
    if gpu:
        batch, batch_why = 16, "16 patches of 512px fit a 16 GB GPU in mixed precision"
    else:
        batch = max(2, min(8, CPU_STEP_PIXELS // (patch * patch)))
        batch_why = (
            f"{batch} patches of {patch}px per step on CPU ({batch * patch * patch // 1024}k pixels, "
            f"at most {CPU_STEP_PIXELS // 1024}k): the step time the width is planned for"
        )
    key, full = width_option if width_option is not None else ("base_channels", 32)
    width, why, step_s = _plan_width(model, key, full, patch, batch, depth, budget_s, gpu, step_time)
    plan[f"model_kwargs.{key}"] = {"value": width, "reason": why}
    plan["batch_size"] = {"value": batch, "reason": batch_why}
    plan["iterations"] = _plan_iterations(fp, budget_s, epochs, patch, batch, step_s, scale)
    plan["ensemble"] = plan_ensemble(plan["iterations"]["value"], budget_s)
    plan["val_every"] = _plan_val_every(fp, patch, batch, step_s, scale)
    plan["compile"] = _plan_compile(budget_s, gpu, can_compile)
    if model == "unet":
        plan["model_kwargs.full_res_channels"] = _plan_full_res(fp, gpu, plan["compile"]["value"], budget_s)
    plan.update(_objective_entries(fp, rare))
    return plan


def _objective_entries(fp: dict, rare: float) -> dict:
    """Sampling, loss, augmentation, optimiser, schedule and normalisation entries (``rare``: the share of
    the rarest foreground class)."""
    plan: dict[str, dict] = {}
    over = 0.5 if rare < RARE_CLASS_SHARE else 0.33
    plan["fg_oversample"] = {
        "value": over,
        "reason": f"rarest foreground class holds {rare:.2%} of the pixels"
        + (f" (< {RARE_CLASS_SHARE:.0%}): half the patches centred on foreground" if over == 0.5 else ""),
    }
    plan["class_weights"] = {
        "value": "none",
        "reason": "the Dice term of dice+ce already weighs every class "
        "equally; foreground oversampling handles the rest",
    }
    plan["loss"] = {"value": "dice+ce", "reason": "robust default for thin and rare structures (nnU-Net's choice)"}
    plan["augment"] = plan_augment(fp.get("augment", {}))
    plan["optimizer"] = {
        "value": "adamw",
        "reason": "adaptive steps converge in few epochs; nnU-Net's SGD schedule assumes ~1000 epochs",
    }
    plan["lr"] = {"value": _default_lr("adamw"), "reason": "AdamW with poly decay to 0 over the budget"}
    plan["schedule"] = {"value": "poly", "reason": "decays to zero exactly when the epochs or the time budget end"}
    if fp.get("bit_depth", 8) > 8:  # the same rule as normalization "auto" (normalize.normalization_for)
        lo, hi = CLIP_PERCENTILES
        plan["normalization"] = {
            "value": "clip_zscore",
            "reason": f"{fp['bit_depth']}-bit data: each channel clipped at its "
            f"{lo}/{hi} training percentiles (hot pixels, saturation), then z-scored",
        }
    else:
        plan["normalization"] = {
            "value": "zscore",
            "reason": "8-bit data: z-score per channel with the training images' mean and standard deviation",
        }
    return plan


def _native_patch(fp: dict, cap: int, gpu: bool) -> tuple[int, str]:
    """Patch side at native resolution and its reason (see :func:`make_plan`)."""
    h, w = fp["median_shape"]
    small_side = min(h, w)
    obj = max(fp.get("object_diameter_p90", {}).values(), default=16.0)
    want = max(64, _pow2_floor(CONTEXT_DIAMETERS * obj))
    fit = _pow2_floor(small_side) if small_side >= 64 else 64
    if gpu:  # context is nearly free on a GPU: the largest patch the images allow
        return min(cap, fit), f"images {h}x{w}: largest power-of-two patch up to {cap} (GPU memory)"
    why = (
        f"images {h}x{w}, 90th-percentile object diameter {obj:.0f}px: >= {CONTEXT_DIAMETERS} object diameters "
        f"of context, at most {cap} and the image size"
        + (f" (256 with a class under {RARE_CLASS_SHARE:.0%}: more patches centred on it)" if cap == 256 else "")
    )
    return min(cap, max(want, 128), fit), why


def compile_possible(user_values: dict) -> bool:
    """``can_compile`` for :func:`make_plan`: a C++ compiler is here and the user did not set
    ``compile: false`` (then the plan is made as without a compiler: no compiled-only choices)."""
    from biomedseg.runtime.device import cpp_compiler_available

    return user_values.get("compile") is not False and cpp_compiler_available()


def _plan_compile(budget_s, gpu: bool, can_compile: bool) -> dict:
    """``torch.compile`` on CPU budgets of 10 minutes and more (experiments §8-9)."""
    if gpu:
        return {"value": False, "reason": "GPU: not measured here yet (--set compile=true to try)"}
    if budget_s is None or budget_s < COMPILE_MIN_BUDGET_S:
        return {
            "value": False,
            "reason": f"no CPU time budget of {COMPILE_MIN_BUDGET_S // 60} min or more: "
            "compiling first (about a minute) would not pay back",
        }
    if not can_compile:
        return {
            "value": False,
            "reason": "compile=false set by the user, or no C++ compiler found (torch.compile needs one on CPU)",
        }
    return {
        "value": True,
        "reason": "CPU budget of 10 min or more: about a minute of compiling buys 1.3-1.6x "
        "faster steps (fused norms and activations)",
    }


def _plan_full_res(fp: dict, gpu: bool, compiled: bool, budget_s) -> dict:
    """A full-resolution U-Net level for thin structures, where its cost is affordable (§9)."""
    widths = {
        c: w for c, w in fp.get("structure_width", {}).items() if fp["class_names"].index(c) != fp.get("background")
    }
    if not widths:
        return {"value": 0, "reason": "no foreground structures measured"}
    name, thinnest = min(widths.items(), key=lambda kv: kv[1])
    if thinnest > THIN_STRUCTURE_WIDTH:
        return {
            "value": 0,
            "reason": f"thinnest class {name} is {thinnest:.1f}px wide (> {THIN_STRUCTURE_WIDTH:.0f}): "
            "half-resolution features resolve it",
        }
    if not gpu and not compiled:
        return {
            "value": 0,
            "reason": f"{name} is {thinnest:.1f}px wide, but an eager full-resolution level halves "
            "the CPU step rate (it lost at 10 min, experiments §6)",
        }
    if not gpu and (budget_s or 0) < FULL_RES_MIN_BUDGET_S:
        return {
            "value": 0,
            "reason": f"{name} is {thinnest:.1f}px wide, but on CPU budgets under "
            f"{FULL_RES_MIN_BUDGET_S // 60} min a full-resolution level did not pay (experiments §9)",
        }
    return {
        "value": 8,
        "reason": f"{name} is {thinnest:.1f}px wide (<= {THIN_STRUCTURE_WIDTH:.0f}): an 8-channel "
        "stride-1 level places its edges at full resolution" + ("" if gpu else " (+0.004-0.005 at 30 CPU-min)"),
    }


def _plan_val_every(fp: dict, patch: int, batch: int, step_s, scale: float) -> dict:
    """Validate every few epochs when one validation pass would cost more than ``MAX_VAL_SHARE`` of
    an epoch's training time (a forward of one tile taken as a third of a training step per image)."""
    from biomedseg.engine.defaults import DEFAULT_OVERLAP
    from biomedseg.engine.scaled import native_tile
    from biomedseg.engine.sliding_window import count_tile_forwards

    n_val = int(fp.get("n_val_images", 0))
    if not step_s or not n_val:
        return {"value": 1, "reason": "every epoch (validation cost not estimated)"}
    h, w = fp["median_shape"]
    tiles = n_val * count_tile_forwards([(h, w)], native_tile(patch, scale), DEFAULT_OVERLAP)
    val_s = tiles * step_s / batch / 3
    epoch_s = steps_per_pass(fp["n_images"] * h * w * scale**2, patch, batch) * step_s
    every = max(1, math.ceil(val_s / (MAX_VAL_SHARE * epoch_s)))
    return {
        "value": every,
        "reason": f"one validation pass (~{tiles} tile forwards, ~{val_s:.0f}s) against "
        f"~{epoch_s:.0f}s of training per epoch: every {every} epoch(s) keeps validation under "
        f"{MAX_VAL_SHARE:.0%} of the time",
    }


def _plan_iterations(fp: dict, budget_s, epochs, patch: int, batch: int, step_s, scale: float = 1.0) -> dict:
    """Training steps the plan expects: from the budget and the measured step, or from ``epochs``.

    For information (the loop stops on the clock or the epoch count, not on this number).
    """
    if budget_s is not None and step_s:
        return {
            "value": int(0.85 * budget_s / step_s),
            "reason": f"85% of the {budget_s:.0f}s budget over "
            f"{step_s:.2f}s per measured step; validation and checkpoints take the rest",
        }

    h, w = fp["median_shape"]
    ipe = steps_per_pass(fp["n_images"] * h * w * scale**2, patch, batch)
    if epochs:
        return {
            "value": epochs * ipe,
            "reason": f"{epochs} epochs x {ipe} steps, one epoch being about one pass over the training pixels",
        }
    if budget_s is not None:
        return {"value": None, "reason": "as many as the budget allows (step time not measured)"}
    from biomedseg.runs.config import DEFAULT_EPOCHS

    return {"value": DEFAULT_EPOCHS * ipe, "reason": f"no budget or epochs: {DEFAULT_EPOCHS} epochs x {ipe} steps"}


def _plan_width(
    model: str, key: str, full: int, patch: int, batch: int, depth: int, budget_s, gpu: bool, step_time
) -> tuple[int, str, float | None]:
    """Width (value of option ``key``, published ``full``), its reason and the seconds per step at
    that width (``None`` when not measured); see :func:`make_plan`."""
    name = "U-Net (32..512 channels)" if model == "unet" else f"{model} ({key}={full})"
    if budget_s is None or gpu:
        measured = budget_s is not None and step_time is not None
        t = measure_robustly(step_time, patch, batch, depth, full)[0] if measured else None
        return full, f"published width of the {name}: best final Dice when it gets enough steps", t
    if step_time is None:
        if budget_s < 20 * 60:
            return (
                max(MIN_WIDTH, full // 2),
                ("CPU budget under 20 min: a 4x cheaper network takes ~4x more steps, which wins there"),
                None,
            )
        return full, f"published width of the {name}", None
    width, (t, spread) = full, measure_robustly(step_time, patch, batch, depth, full)
    steps = int(0.85 * budget_s / t)
    first = f"measured {t:.2f}s per step at {key}={full} ({spread}): ~{steps} steps fit the budget"
    keep, why = full_width_wins(steps)
    if keep:
        return full, f"{first}; {why}: full width", t
    while not keep and width // 2 >= MIN_WIDTH:
        width //= 2  # measured, not assumed: half the channels cost 2.2-3.3x less per CPU step, not 4x
        t = measure_robustly(step_time, patch, batch, depth, width)[0]
        steps = int(0.85 * budget_s / t)
        keep = full_width_wins(steps)[0]
    return width, f"{first}; {why}: {key}={width}, measured {t:.2f}s per step, takes ~{steps} steps", t


def _default_lr(optimizer: str) -> float:
    from biomedseg.runs.config import DEFAULT_LR

    return DEFAULT_LR[optimizer]


def plan_for_optimizer(plan: dict, explicit: dict) -> dict:
    """``plan`` whose learning rate belongs to the optimiser the run uses: the planned rate is the
    planned optimiser's, so a user who picks another optimiser without a learning rate gets that
    optimiser's own default (:data:`~biomedseg.runs.config.DEFAULT_LR`), and the reason says so."""
    chosen, planned = explicit.get("optimizer"), (plan.get("optimizer") or {}).get("value")
    if chosen is None or chosen == planned or "lr" in explicit or "lr" not in plan:
        return plan
    from biomedseg.runs.config import DEFAULT_LR

    if chosen not in DEFAULT_LR:  # an unknown name: the config check names it
        return plan
    lr = DEFAULT_LR[chosen]
    return {
        **plan,
        "lr": {
            "value": lr,
            "reason": f"optimizer {chosen} set by the user: its own default rate {lr:g} "
            f"(the planned {plan['lr']['value']:g} is {planned}'s)",
        },
    }


def apply_plan(values: dict, plan: dict, explicit: dict) -> dict:
    """Config ``values`` updated with every plan entry the user did not set in ``explicit``."""
    out = {**values, "model_kwargs": dict(values.get("model_kwargs") or {})}
    for key, entry in plan.items():
        if key.startswith("model_kwargs."):
            sub = key.split(".", 1)[1]
            if sub not in (explicit.get("model_kwargs") or {}):
                out["model_kwargs"][sub] = entry["value"]
        elif key in explicit or key not in _CONFIG_FIELDS():
            continue
        else:
            out[key] = entry["value"]
    return out


def _CONFIG_FIELDS() -> set[str]:
    from biomedseg.runs.config import TrainConfig

    return set(TrainConfig.model_fields)
