"""``tune_postprocess``: choose post-processing parameters on the validation split.

The validation images (``RUN/dataset.json`` ``split.val``, data from ``RUN/dataset.json``
``source`` unless given) are predicted **once**; their probabilities are cached in memory
(float16, block-averaged down to about ``max_pixels`` pixels per image when larger; the masks
are subsampled at the block centres). Then, cheaply, on the cache:

1. per-class probability thresholds (coordinate search over a grid, maximising pooled Dice);
2. per-class minimum object area (exact search over the objects' areas, maximising the class's
   pooled Dice; components are counted once, removing them only changes counts);
3. the empty-mask gate: minimum total foreground area or minimum maximum probability, whichever
   maximises the mean per-image Dice (``image_dice``); adopted only when it improves it. Then,
   for a model with an image-level head (``train --classifier-head``), a minimum classifier
   probability on top (:mod:`~biomedseg.postprocess.gates`), reported with and without.

Every stage is adopted only when it is a reliable gain on the validation images
(:func:`~biomedseg.postprocess.scores.reliable_gain`); the scoring helpers live in
:mod:`~biomedseg.postprocess.scores`.

Before the stages, the calibration temperature is fitted on the validation pixels (a seeded sample
of each image's full-resolution labelled pixels, :func:`~biomedseg.workflows.reliability.fit_calibration`,
shrunk toward 1 when the validation images disagree or are few)
and always kept (``temperature``; it never changes the argmax); the cache is tempered with it, so the
thresholds and the gate are tuned on tempered probabilities, as
:func:`~biomedseg.postprocess.ops.apply_postprocess` applies them (a downsampled cache is tempered
after block-averaging, a close approximation). ``tuning`` records the temperature and the expected
calibration error before and after it (``ece_before``, ``ece_after``).

The other steps of an existing ``RUN/postprocess.yaml`` (morphology, watershed) are kept and
applied while searching. The result is written to ``RUN/postprocess.yaml`` with a ``tuning``
section recording the scores before and after (``dice`` pooled, ``image_dice`` with and
without gating), measured on the (possibly downsampled) validation cache.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from biomedseg.postprocess.gates import _gated, _midpoints, _tune_gate, tune_gating  # noqa: F401
from biomedseg.postprocess.ops import (
    ClassSteps,
    GatingConfig,
    PostprocessConfig,
    class_index,
    class_mask_steps,
    decide,
    foreground,
    label_objects,
    load_postprocess,
    remove_small_objects,
    resolve_classes,
    save_postprocess,
)
from biomedseg.postprocess.scores import (  # noqa: F401  (re-exported: tests, benchmarks)
    ADOPTION_RULE,
    BOOTSTRAP_SAMPLES,
    MIN_MEAN_GAIN,
    MIN_WIN_SHARE,
    _Cached,
    _counts,
    _dice_from_counts,
    _image_dice,
    _per_image_counts,
    _pooled_dice,
    _pooled_from_counts,
    reliable_gain,
)

log = logging.getLogger("biomedseg")

#: ``tuning.split`` of a CV folder tuned on its out-of-fold predictions
OUT_OF_FOLD = "out-of-fold"
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def _downsample(proba: np.ndarray, target: np.ndarray, max_pixels: int) -> tuple[np.ndarray, np.ndarray, int]:
    k, h, w = proba.shape
    f = max(1, math.ceil(math.sqrt(h * w / max_pixels))) if max_pixels else 1
    if f == 1:
        return proba.astype(np.float16), target.astype(np.uint8), 1
    hh, ww = h // f, w // f
    p = proba[:, : hh * f, : ww * f].reshape(k, hh, f, ww, f).mean(axis=(2, 4))
    t = target[f // 2 : hh * f : f, f // 2 : ww * f : f][:hh, :ww]
    return p.astype(np.float16), t.astype(np.uint8), f


def _search_steps(per_class: dict[int, ClassSteps], c: int) -> ClassSteps:
    """The class's configured shape steps without the ones being tuned (and the watershed,
    which does not change the semantic mask)."""
    return per_class.get(c, ClassSteps()).model_copy(
        update={"min_object_area": 0, "watershed": None, "threshold": None}
    )


def _predict_masks(cache, thresholds, per_class, fg, bg, min_areas=None):
    """Masks of the cache with ``thresholds``, the configured shape steps and ``min_areas``
    (cache pixels)."""
    b = bg if bg is not None else 0
    out = []
    for item in cache:
        mask = decide(item.proba.astype(np.float32), thresholds, bg)
        for c in fg:
            steps, area = _search_steps(per_class, c), (min_areas or {}).get(c, 0)
            if not steps.shapes and not area:
                continue
            before = mask == c
            after = class_mask_steps(before, steps, 1.0 / item.factor)
            if area:
                after = remove_small_objects(after, area)
            mask[before & ~after] = b
            mask[after & ~before & (mask == b)] = c
        out.append(mask)
    return out


def _tune_thresholds(cache, base_thr, per_class, fg, bg, grid) -> tuple[dict[int, float], float]:
    thr = dict(base_thr)
    best = _pooled_dice(_predict_masks(cache, thr, per_class, fg, bg), cache, fg)[0]
    for _ in range(1 if len(fg) == 1 else 2):
        for c in fg:
            scores = []
            for t in grid:
                trial = {**thr, c: t}
                scores.append((_pooled_dice(_predict_masks(cache, trial, per_class, fg, bg), cache, fg)[0], t))
            top = max(s for s, _ in scores)
            # among (nearly) equal scores prefer the threshold closest to 0.5
            t_best = min((t for s, t in scores if s >= top - 1e-9), key=lambda t: abs(t - 0.5))
            if top > best - 1e-12:
                thr[c], best = t_best, top
    return thr, best


def _tune_min_area(cache, masks, c) -> tuple[int, float, float]:
    """Exact best minimum area for class ``c`` (cache pixels): ``(area, dice_before, dice_after)``."""
    tp = fp = fn = 0
    comp_area, comp_tp = [], []
    for m, item in zip(masks, cache):
        a, b, d = _counts(m, item.target, c)
        tp, fp, fn = tp + a, fp + b, fn + d
        lab, n = label_objects(m == c)
        if n:
            comp_area.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
            comp_tp.append(np.bincount(lab.ravel(), weights=(item.target == c).ravel(), minlength=n + 1)[1:])
    before = float(_dice_from_counts(tp, fp, fn))
    if not comp_area:
        return 0, before, before
    area = np.concatenate(comp_area).astype(np.int64)
    ctp = np.concatenate(comp_tp).astype(np.int64)
    order = np.argsort(area, kind="stable")
    area, ctp = area[order], ctp[order]
    # removing every component with area < a: candidates a = each distinct area + 1
    cum_tp = np.cumsum(ctp)
    cum_fp = np.cumsum(area - ctp)
    last = np.r_[area[1:] != area[:-1], True]  # end of each run of equal areas
    cand = area[last] + 1
    d = _dice_from_counts(tp - cum_tp[last], fp - cum_fp[last], fn + cum_tp[last])
    i = int(np.argmax(d))
    if d[i] > before + 1e-9:
        return int(cand[i]), before, float(d[i])
    return 0, before, before


#: what ``tuning`` records of :func:`~biomedseg.workflows.reliability.fit_calibration`'s block
CALIBRATION_KEYS = ("temperature", "temperature_fitted", "temperature_weight", "ece_before", "ece_after")


def tune_postprocess(
    run_dir,
    data=None,
    split: str = "val",
    *,
    images=None,
    masks=None,
    tta: bool | str = False,
    device: str = "auto",
    max_pixels: int = 512 * 512,
    thresholds=THRESHOLDS,
    tune_area: bool = True,
    gate: bool = True,
    write: bool = True,
    quiet: bool = True,
    loaded=None,
    valid_dir=None,
) -> PostprocessConfig:
    """Tune per-class thresholds, minimum object areas and the empty-mask gate on ``split``.

    ``data``: the labelled data folder (default: the run's training data, ``dataset.json``
    ``source``). Returns the config (also written to ``RUN/postprocess.yaml`` unless
    ``write=False``); ``cfg.tuning`` holds the scores before/after.

    A cross-validation folder (``biomedseg cv``) is tuned, on ``split="val"``, on the out-of-fold
    predictions of its whole training pool (``tuning.split`` is ``"out-of-fold"``); its
    ``postprocess.yaml`` then applies to the ensemble of its folds.

    ``valid_dir``: a folder of ``<id>.*`` valid-region masks (as ``evaluate``'s, e.g. DRIVE's field of
    view): the temperature is fitted on the pixels inside them only, the pixels ``evaluate`` scores.
    """
    run_dir, source_root, classes, bg, cache, split = _tuning_inputs(
        run_dir, data, split, images, masks, tta, device, max_pixels, quiet, loaded, valid_dir
    )
    k = len(classes)
    fg = foreground(k, bg)
    base = load_postprocess(run_dir) or PostprocessConfig()
    per_class = resolve_classes(base, k, classes)
    factor = max(c.factor for c in cache)
    calibration = _calibrate(cache)

    # 0. plain argmax, and the base config's own thresholds
    argmax_masks = [it.proba.astype(np.float32).argmax(0).astype(np.uint8) for it in cache]
    scores = {
        "dice_argmax": _pooled_dice(argmax_masks, cache, fg)[0],
        "image_dice_argmax": _mean_image_dice(argmax_masks, cache, fg),
    }
    adopted: dict = {}
    # 1. thresholds, 2. minimum object areas (cache pixels)
    thr, masks_, scores["dice_thresholds"] = _threshold_stage(cache, per_class, fg, bg, list(thresholds), adopted)
    min_area = {c: 0 for c in fg}
    if tune_area:
        min_area, masks_ = _min_area_stage(cache, masks_, thr, per_class, fg, bg, adopted)
    scores["dice_tuned"] = _pooled_dice(masks_, cache, fg)[0]
    # 3. gating: area / max-probability gate, then the classifier head's gate (gate_tuning.py)
    gating, gate_report = _gate_stage(cache, masks_, fg, bg, adopted, gate, scores["dice_tuned"])

    # assemble the config at full resolution
    new_classes = _full_resolution_classes(base, classes, fg, thr, min_area if tune_area else None, factor)
    full_gate = gating.model_copy(update={"min_total_area": int(gating.min_total_area * factor * factor)})
    tuning = {
        "split": split,
        "n_images": len(cache),
        "data": str(source_root),
        "downsample": factor,
        "tta": str(tta),
        **{key: round(v, 6) for key, v in scores.items()},
        **gate_report,
        "gating_adopted": bool(gating.active),
        "adopted": adopted,
        "adoption_rule": ADOPTION_RULE,
        **{key: calibration[key] for key in CALIBRATION_KEYS},
    }
    cfg = PostprocessConfig(
        classes=new_classes, gating=full_gate, tuning=tuning, temperature=calibration["temperature"]
    )
    _log_tuning(len(cache), split, scores, gate_report, gating.active)
    if write:
        save_postprocess(cfg, run_dir)
    return cfg


def _calibrate(cache: list[_Cached]) -> dict:
    """Fit the temperature on the cache's pixel samples and temper the cached probabilities with it
    (in place); returns :func:`~biomedseg.workflows.reliability.fit_calibration`'s block."""
    from biomedseg.metrics.calibration import temper_probabilities
    from biomedseg.workflows.reliability import fit_calibration

    block = fit_calibration([(it.pixels, it.labels) for it in cache if it.pixels is not None])
    t = block["temperature"]
    if t != 1.0:
        for it in cache:
            it.proba = temper_probabilities(it.proba.astype(np.float32), t).astype(np.float16)
    log.info(
        "temperature %.3g (fitted %.3g, weight %.2f from %d images) on %d validation pixels: ECE %s -> %s",
        t,
        block["temperature_fitted"],
        block["temperature_weight"],
        block["n_images"],
        block["n_pixels"],
        *(f"{block[k]:.4f}" if block[k] is not None else "n/a" for k in ("ece_before", "ece_after")),
    )
    return block


def _log_tuning(n: int, split: str, scores: dict, gate_report: dict, gated: bool) -> None:
    log.info(
        "post-processing tuned on %d %s images: dice %.4f (argmax) -> %.4f; image_dice %.4f without gating, "
        "%.4f with gating%s",
        n,
        split,
        scores["dice_argmax"],
        scores["dice_tuned"],
        gate_report["image_dice_without_gating"],
        gate_report["image_dice_with_gating"],
        "" if gated else " (gate not adopted)",
    )


def _tuning_inputs(run_dir, data, split, images, masks, tta, device, max_pixels, quiet, loaded, valid_dir=None):
    """``(folder, data root, classes, background, cache, split name)``: the cache of predictions to
    tune on, from the out-of-fold predictions of a CV folder or by predicting ``split``."""
    from biomedseg.data.splits import select_split
    from biomedseg.inference.run import LoadedRun, load_run
    from biomedseg.runs.cv import is_cv, open_cv

    if not isinstance(loaded, LoadedRun) and split == "val" and is_cv(run_dir):
        cv = open_cv(run_dir)
        return (cv.root, *_oof_cache(cv, data, images, masks, tta, device, max_pixels, quiet, valid_dir), OUT_OF_FOLD)
    loaded = loaded if isinstance(loaded, LoadedRun) else load_run(run_dir, device=device)
    source, ids, by_id = select_split(loaded, data, images, masks, split)
    samples = [by_id[sid] for sid in ids]
    cache = _predict_cache(loaded, loaded.predictor(tta=tta), samples, max_pixels, quiet, valid_dir)
    return Path(loaded.run_dir), source.root, loaded.classes, loaded.background, cache, split


def _oof_cache(cv, data, images, masks, tta, device, max_pixels: int, quiet: bool, valid_dir=None):
    """``(data root, classes, background, cache)`` of the out-of-fold predictions of ``cv``."""
    from biomedseg.core.errors import UserError
    from biomedseg.io import Palette
    from biomedseg.workflows.oof import out_of_fold

    root = cv.folds()["data"]
    if images is not None or masks is not None or (data is not None and Path(data).resolve() != Path(root)):
        raise UserError(
            f"{cv.root}: a CV folder is tuned on the out-of-fold predictions of its own data ({root}); "
            "leave DATA out, or tune the CV ensemble on another --split"
        )
    from biomedseg.workflows.reliability import pixels_per_image

    info = cv.fold(0).dataset()
    palette = Palette.from_json(info.palette)
    n = pixels_per_image(len(cv.folds()["pool"]))
    cache = [
        _cached(s, proba, palette, info.strict_index, max_pixels, p_image, (n, i), _valid_region(valid_dir, s.id))
        for i, (s, proba, p_image) in enumerate(out_of_fold(cv, tta, device, quiet))
    ]
    log.info("%s: tuning on the out-of-fold predictions of %d training-pool images", cv.root, len(cache))
    return root, info.classes, info.background, cache


def _cached(
    sample, proba, palette, strict_index: bool, max_pixels: int, image_probability, pixels, valid=None
) -> _Cached:
    """The (downsampled) probabilities and mask of one labelled sample, with ``pixels = (n, seed)``:
    a sample of ``n`` labelled full-resolution pixels (inside ``valid`` when given,
    :func:`~biomedseg.workflows.reliability.pixel_sample`)."""
    from biomedseg.io import read_mask
    from biomedseg.workflows.reliability import pixel_sample

    target, _ = read_mask(sample.mask, palette, strict_index=strict_index)
    p, t, f = _downsample(proba, target, max_pixels)
    sample_p, sample_y = pixel_sample(proba, target, *pixels, valid)
    return _Cached(sample.id, p, t, f, image_probability, sample_p, sample_y)


def _valid_region(valid_dir, sid: str):
    """``evaluate``'s valid-region mask of ``sid`` (``None`` without ``valid_dir``)."""
    from biomedseg.workflows.evaluation import _valid_region as region

    return region(valid_dir, sid)


def _mean_image_dice(masks, cache, fg) -> float:
    return float(np.mean([_image_dice(m, it.target, fg) for m, it in zip(masks, cache)]))


def _predict_cache(loaded, predictor, samples, max_pixels: int, quiet: bool, valid_dir=None) -> list[_Cached]:
    """Predict each labelled sample once and keep its (downsampled) probabilities and mask."""
    from tqdm.auto import tqdm

    from biomedseg.inference.predict.core import predict_proba_image
    from biomedseg.io import Palette, read_image
    from biomedseg.io.pixel_size import pixel_size
    from biomedseg.workflows.reliability import pixels_per_image

    palette = Palette.from_json(loaded.info.palette)
    n = pixels_per_image(len(samples))
    cache: list[_Cached] = []
    for s in tqdm(samples, desc="predicting val", unit="img", disable=True if (quiet or len(samples) < 2) else None):
        proba = predict_proba_image(loaded, predictor, read_image(s.image), pixel_size(s.image))
        p_image = predictor.last_image_probability
        valid = _valid_region(valid_dir, s.id)
        cache.append(_cached(s, proba, palette, loaded.info.strict_index, max_pixels, p_image, (n, len(cache)), valid))
    return cache


def _threshold_stage(cache, per_class, fg, bg, grid, adopted: dict):
    """Stage 1: per-class thresholds, kept over the base config's when a reliable gain
    (``adopted["thresholds"]``). Returns ``(thresholds, masks, pooled dice)``."""
    base_thr = {
        c: (per_class[c].threshold if c in per_class and per_class[c].threshold is not None else 0.5) for c in fg
    }
    thr, dice_thr = _tune_thresholds(cache, base_thr, per_class, fg, bg, grid)
    base_masks = _predict_masks(cache, base_thr, per_class, fg, bg)
    masks_ = _predict_masks(cache, thr, per_class, fg, bg)
    adopted["thresholds"] = reliable_gain(
        _per_image_counts(base_masks, cache, fg), _per_image_counts(masks_, cache, fg)
    )
    if not adopted["thresholds"]:
        thr, masks_ = dict(base_thr), base_masks
        dice_thr = _pooled_dice(masks_, cache, fg)[0]
    return thr, masks_, dice_thr


def _min_area_stage(cache, masks_, thr, per_class, fg, bg, adopted: dict):
    """Stage 2: per-class minimum object areas (cache pixels), kept when a reliable gain
    (``adopted["min_object_area"]``). Returns ``(areas, masks)``."""
    min_area = {c: _tune_min_area(cache, masks_, c)[0] for c in fg}
    trial = _predict_masks(cache, thr, per_class, fg, bg, min_area)
    adopted["min_object_area"] = reliable_gain(
        _per_image_counts(masks_, cache, fg), _per_image_counts(trial, cache, fg)
    )
    if adopted["min_object_area"]:
        return min_area, trial
    return {c: 0 for c in fg}, masks_


def _gate_stage(cache, masks_, fg, bg, adopted: dict, gate: bool, dice_tuned: float):
    """Stage 3: the empty-mask gate (:func:`tune_gating`), or no gate with the scores it would report."""
    if gate:
        return tune_gating(cache, masks_, fg, bg, adopted)
    imd = round(_mean_image_dice(masks_, cache, fg), 6)
    return GatingConfig(), {
        "image_dice_without_gating": imd,
        "image_dice_with_gating": imd,
        "dice_with_gating": round(dice_tuned, 6),
    }


def _full_resolution_classes(base: PostprocessConfig, classes, fg, thr, min_area, factor: int) -> dict:
    """The per-class steps of ``base`` with the tuned thresholds and (unless ``min_area`` is
    ``None``) minimum areas scaled from cache pixels back to full resolution."""
    k = len(classes)
    new_classes = dict(base.classes)
    keys = {class_index(key, k, classes): key for key in base.classes}
    for c in fg:
        key = keys.get(c, classes[c])
        old = base.classes.get(key, ClassSteps())
        t = float(thr[c])
        upd = {"threshold": t if abs(t - 0.5) > 1e-9 or old.threshold is not None else None}
        if min_area is not None:
            upd["min_object_area"] = int(min_area[c] * factor * factor)
        new_classes[key] = old.model_copy(update=upd)
    return new_classes
