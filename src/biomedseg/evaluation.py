"""``biomedseg.evaluate(...)``: metrics of a trained run on a labelled split.

Writes to ``out``: ``metrics.json`` (pooled scores, ``image_dice``, ``per_class``),
``per_image.csv``, ``overlays/<id>.png`` (TP/FP/FN per foreground class) and ``report.html``.
Predictions are post-processed with ``RUN/postprocess.yaml`` when the run has one
(``postprocess=False`` scores the raw argmax); ``metrics.json`` records the chain used. When
the chain has an empty-mask gate (area, max probability or the classifier head's
``min_classifier_probability``), ``metrics.json`` also holds ``image_dice_without_gating``.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from biomedseg.errors import UserError

log = logging.getLogger("biomedseg")


def _split_ids(split: str, run_split: dict, meta: dict | None, all_ids: list[str], data_is_training_data: bool):
    if split == "all":
        return all_ids
    if data_is_training_data and run_split.get(split):
        return [i for i in run_split[split] if i in set(all_ids)]
    given = (meta or {}).get("split", {})
    if split in given:
        return [i for i in given[split] if i in set(all_ids)]
    raise UserError(f"--split {split}: the data has no {split!r} split (dataset.json); use --split all")


def select_split(loaded, data, images, masks, split: str):
    """Labelled samples of ``split`` in the DATA given (or the run's own training data).

    Returns ``(source, ids, by_id)``; the run's own split is used when DATA is the training data.
    """
    from biomedseg.data.discovery import check_pairs, find_pairs, resolve_data

    if data is None and images is None:
        data = loaded.info.source
        if not data or not Path(data).is_dir():
            raise UserError(f"{loaded.run_dir}: the training data folder {data!r} is gone; pass DATA")
    source = resolve_data(data, images, masks)
    samples = find_pairs(source.images_dir, source.masks_dir)
    check_pairs(samples)
    same_data = Path(loaded.info.source or "") == Path(source.root).resolve()
    ids = _split_ids(split, loaded.info.split, source.meta, [s.id for s in samples], same_data)
    if not ids:
        raise UserError(f"{source.root}: the {split!r} split is empty; choose another --split")
    return source, ids, {s.id: s for s in samples}


def evaluate(run, data=None, out=None, *, images=None, masks=None, split: str = "test", tta: bool | str = False,
             overlays: bool = True, valid_dir: str | None = None, device: str = "auto", quiet: bool = False,
             postprocess: bool = True) -> dict:
    """Evaluate run folder ``run`` on ``data``; returns the metrics dict also written to ``metrics.json``.

    ``valid_dir``: optional folder of ``<id>.png`` masks (non-zero = counted), e.g. DRIVE's
    field-of-view masks; pixels outside are ignored. ``tta``: ``False`` | ``"flips"`` |
    ``"flips+rot90"``. ``postprocess``: apply ``RUN/postprocess.yaml`` when present.
    """
    from tqdm.auto import tqdm

    from biomedseg.inference.postprocess import load_postprocess
    from biomedseg.inference.predict import predict_image, warn_if_classifier_gate_unusable
    from biomedseg.inference.run import LoadedRun, load_run
    from biomedseg.io import Palette, read_image, read_mask, read_raw, write_json, write_png, write_text
    from biomedseg.metrics import MetricAccumulator
    from biomedseg.reports.html import write_evaluation_report
    from biomedseg.reports.overlays import overlay_panel

    if out is None:
        raise UserError("evaluate: --out DIR is required")
    loaded = run if isinstance(run, LoadedRun) else load_run(run, device=device)
    source, ids, by_id = select_split(loaded, data, images, masks, split)
    palette = Palette.from_json(loaded.info.palette)
    classes, bg = loaded.classes, loaded.background
    predictor = loaded.predictor(tta=tta)
    post = load_postprocess(loaded.run_dir) if postprocess else None
    if post is not None and post.is_identity:
        post = None
    warn_if_classifier_gate_unusable(post, predictor)
    ungated = post.model_copy(update={"gating": type(post.gating)()}) if post is not None and post.gating.active \
        else None
    ungated_dice = []
    out = Path(out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    acc = MetricAccumulator(len(classes), classes, bg)
    overlay_paths, snapped = [], 0
    for sid in tqdm(ids, desc="evaluating", unit="img", disable=True if (quiet or len(ids) < 2) else None):
        s = by_id[sid]
        image = read_image(s.image)
        target, n = read_mask(s.mask, palette, strict_index=loaded.info.strict_index)
        snapped += n
        valid = None
        if valid_dir is not None:
            vp = next(iter(sorted(Path(valid_dir).glob(f"{sid}.*"))), None)
            if vp is None:
                raise UserError(f"{valid_dir}: no valid-region mask for {sid}")
            valid = np.asarray(read_raw(vp)) > 0
            valid = valid if valid.ndim == 2 else valid.any(-1)
        pred, proba = predict_image(loaded, predictor, image, postprocess=post)
        acc.update(pred, target, valid=valid, image_id=sid)
        if ungated is not None:  # the same chain without the gate: what gating is worth
            from biomedseg.inference.postprocess import apply_postprocess
            from biomedseg.metrics import image_dice

            plain, _ = apply_postprocess(proba, ungated, classes, bg)
            ungated_dice.append(image_dice(plain, target, len(classes), bg, valid=valid))
        if overlays:
            p = out / "overlays" / f"{sid}.png"
            write_png(p, overlay_panel(image, pred, target, classes, background=bg, valid=valid))
            overlay_paths.append(p)
    if snapped:
        log.warning("%d ground-truth pixels were off the palette and were snapped to the nearest class", snapped)
    metrics = acc.summary()
    if ungated is not None:
        metrics["image_dice_without_gating"] = float(np.mean(ungated_dice)) if ungated_dice else float("nan")
    metrics.update({"split": split, "n_images": len(ids), "run": str(loaded.run_dir), "data": str(source.root),
                    "tta": tta, "classes": classes, "background": classes[bg] if bg is not None else None,
                    "postprocess": post.model_dump(mode="json", exclude={"tuning"}) if post is not None else None})
    rows = acc.per_image_rows()
    write_json(out / "metrics.json", _finite(metrics))
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
        write_text(out / "per_image.csv", buf.getvalue())
    curves = loaded.run.paths.curves
    write_evaluation_report(out, metrics, rows, overlay_paths, title=f"biomedseg evaluation: {Path(source.root).name} ({split})",
                            curves_png=curves if curves.is_file() else None)
    return metrics


def _finite(obj):
    """Replace NaN/inf by None so metrics.json is strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
