"""``biomedseg.evaluate(...)``: metrics of a trained run on a labelled split.

Writes to ``out``: ``metrics.json`` (pooled scores, ``image_dice``, ``per_class``),
``per_image.csv``, ``overlays/<id>.png`` (TP/FP/FN per foreground class) and ``report.html``.
Field metrics (issue 25, :mod:`biomedseg.workflows.field_metrics`): the groups chosen by
``metrics`` (``--metrics``), ``dataset.json`` ``"metrics"`` or the data's fingerprint add their
columns to ``per_image.csv``, their means to ``metrics.json`` (top level, next to the pixel scores)
and the choice, its reason and the empty-case conventions as ``metrics.json`` ``field``;
``per_object.csv`` lists every true and predicted object. Predictions are post-processed with
``RUN/postprocess.yaml`` when the run has one
(``postprocess=False`` scores the raw argmax); ``metrics.json`` records the chain used. When
the chain has an empty-mask gate (area, max probability or the classifier head's
``min_classifier_probability``), ``metrics.json`` also holds ``image_dice_without_gating``.

Trust (issue 22, :mod:`biomedseg.workflows.reliability`): the probabilities are taken at the run's
calibration temperature (``postprocess.yaml`` ``temperature``, also with ``postprocess=False``: it
never changes the argmax), and the chain's thresholds and gate decide on them, as ``tune-postprocess``
tuned them. ``per_image.csv`` gains ``uncertainty`` (the default per-image score) and every per-image
score by name, computed on them; ``metrics.json`` ``uncertainty`` says how well
they rank the errors (Spearman with the per-image Dice, AURC against random order and the best
order, Dice kept when the most uncertain 10/20/50% go to review) and ``calibration`` the expected
calibration error at temperature 1 and at the run's temperature.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.core.labels import class_argmax
from biomedseg.data.splits import select_split
from biomedseg.metrics.choice import GROUPS, parse_metric_names
from biomedseg.workflows.field_metrics import FieldScorer, write_per_object
from biomedseg.workflows.reliability import ReliabilityScorer, format_reliability, tempered

log = logging.getLogger("biomedseg")


def evaluate(
    run,
    data=None,
    out=None,
    *,
    images=None,
    masks=None,
    split: str = "test",
    tta: bool | str = False,
    overlays: bool = True,
    valid_dir: str | None = None,
    device: str = "auto",
    quiet: bool = False,
    postprocess: bool = True,
    metrics=None,
    nsd_tolerance_um: float | None = None,
) -> dict:
    """Evaluate run folder ``run`` on ``data``; returns the metrics dict also written to ``metrics.json``.

    ``valid_dir``: optional folder of ``<id>.png`` masks (non-zero = counted), e.g. DRIVE's
    field-of-view masks; pixels outside are ignored. ``tta``: ``False`` | ``"flips"`` |
    ``"flips+rot90"``. ``postprocess``: apply ``RUN/postprocess.yaml`` when present. ``metrics``:
    metric groups or names (``"object,aji"``, a list, ``"all"``; ``None``: ``dataset.json`` or the
    fingerprint). ``nsd_tolerance_um``: the NSD tolerance in µm where the pixel size is known.
    """
    from biomedseg.inference.run import LoadedRun, load_run
    from biomedseg.metrics.pixel import MetricAccumulator

    if out is None:
        raise UserError("evaluate: --out DIR is required")
    if metrics is not None:
        parse_metric_names(metrics)  # a bad name fails before the run is loaded
    loaded = run if isinstance(run, LoadedRun) else load_run(run, device=device)
    source, ids, by_id = select_split(loaded, data, images, masks, split)
    classes, bg = loaded.classes, loaded.background
    predictor = loaded.predictor(tta=tta)
    post, ungated = _postprocess_chains(loaded, predictor, postprocess)
    trust = ReliabilityScorer(_temperature(loaded), bg, len(ids))
    out = Path(out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    acc = MetricAccumulator(len(classes), classes, bg)
    samples = [by_id[sid] for sid in ids]
    field = FieldScorer.for_data(metrics, source, samples, loaded.info, nsd_tolerance_um)
    ungated_dice, overlay_paths = _score_images(
        loaded,
        predictor,
        samples,
        (acc, field, trust),
        post,
        ungated,
        valid_dir,
        out / "overlays" if overlays else None,
        quiet,
    )
    metrics, rows = _scores_and_rows(acc, field, trust)
    if ungated is not None:
        metrics["image_dice_without_gating"] = float(np.mean(ungated_dice)) if ungated_dice else float("nan")
    metrics.update(
        {
            "split": split,
            "n_images": len(ids),
            "run": str(loaded.run_dir),
            "data": str(source.root),
            "tta": tta,
            "classes": classes,
            "background": classes[bg] if bg is not None else None,
            "postprocess": post.model_dump(mode="json", exclude={"tuning"}) if post is not None else None,
        }
    )
    write_per_object(out, field.acc.object_rows())
    _write_results(
        out,
        metrics,
        rows,
        overlay_paths,
        loaded.run.paths.curves,
        title=f"biomedseg evaluation: {Path(source.root).name} ({split})",
    )
    return metrics


def _scores_and_rows(acc, field, trust) -> tuple[dict, list[dict]]:
    """``(metrics, per-image rows)`` of the pixel scores, the field metrics and the uncertainty columns."""
    field.instances.finish()
    metrics = {**acc.summary(), **field.acc.summary(), "field": field.summary()}
    metrics.update(trust.summary([r["image_dice"] for r in acc.per_image_rows()]))
    rows = [
        {**r, **{k: v for k, v in f.items() if k != "id"}, **u}
        for r, f, u in zip(acc.per_image_rows(), field.acc.rows, trust.rows)
    ]
    return metrics, rows


def _predicted_instances(field: FieldScorer, loaded, post, predictor, proba):
    """``{class: labels}`` of the post-processing's watershed steps when objects are scored (else ``None``)."""
    if post is None or not field.wants_objects:
        return None
    from biomedseg.postprocess.ops import apply_postprocess

    _, inst = apply_postprocess(
        proba,
        post,
        loaded.classes,
        loaded.background,
        instances=None,
        image_probability=getattr(predictor, "last_image_probability", None),
    )
    return inst


def _postprocess_chains(loaded, predictor, postprocess: bool):
    """``(post, ungated)``: the run's post-processing (``None`` when off or a no-op) and, when it
    has an empty-mask gate, the same chain without the gate (to report what gating is worth)."""
    from biomedseg.inference.predict.core import warn_if_classifier_gate_unusable
    from biomedseg.postprocess.ops import load_postprocess

    post = load_postprocess(loaded.run_dir) if postprocess else None
    if post is not None and post.is_identity:
        post = None
    warn_if_classifier_gate_unusable(post, predictor)
    ungated = (
        post.model_copy(update={"gating": type(post.gating)()}) if post is not None and post.gating.active else None
    )
    return post, ungated


def _temperature(loaded) -> float:
    """The run's calibration temperature (``postprocess.yaml``; 1 without one)."""
    from biomedseg.postprocess.ops import load_postprocess

    cfg = load_postprocess(loaded.run_dir)
    return cfg.temperature if cfg is not None else 1.0


def _score_images(loaded, predictor, samples, scorers, post, ungated, valid_dir, overlay_dir, quiet: bool):
    """Predict and score each sample into ``scorers`` (the pixel accumulator, the field metrics, the
    uncertainty columns); returns ``(image Dice without the gate (when ``ungated``), overlay paths
    written in ``overlay_dir`` (when not ``None``))``."""
    from tqdm.auto import tqdm

    from biomedseg.core.render import overlay_panel
    from biomedseg.io import Palette, read_image, read_mask, write_png

    palette = Palette.from_json(loaded.info.palette)
    classes, bg = loaded.classes, loaded.background
    acc, field, trust = scorers
    ungated_dice, overlay_paths, snapped = [], [], 0
    for s in tqdm(samples, desc="evaluating", unit="img", disable=True if (quiet or len(samples) < 2) else None):
        image = read_image(s.image)
        target, n = read_mask(s.mask, palette, strict_index=loaded.info.strict_index)
        snapped += n
        valid = _valid_region(valid_dir, s.id)
        pred, proba, raw = _predict(loaded, predictor, s.image, image, post, trust.temperature)
        acc.update(pred, target, valid=valid, image_id=s.id)
        field.score(s, pred, target, valid, _predicted_instances(field, loaded, post, predictor, proba))
        trust.score(raw, proba, target, valid)
        if ungated is not None:  # the same chain without the gate: what gating is worth
            from biomedseg.metrics.pixel import image_dice
            from biomedseg.postprocess.ops import apply_postprocess

            plain, _ = apply_postprocess(proba, ungated, classes, bg)
            ungated_dice.append(image_dice(plain, target, len(classes), bg, valid=valid))
        if overlay_dir is not None:
            p = overlay_dir / f"{s.id}.png"
            write_png(p, overlay_panel(image, pred, target, classes, background=bg, valid=valid), preview=True)
            overlay_paths.append(p)
    if snapped:
        log.warning("%d ground-truth pixels were off the palette and were snapped to the nearest class", snapped)
    return ungated_dice, overlay_paths


def _predict(loaded, predictor, path, image, post, temperature: float):
    """``(mask, probabilities at the run's temperature, probabilities at temperature 1)`` of one image:
    the post-processing chain (``None``: argmax) decides on the tempered probabilities, as it was tuned."""
    from biomedseg.inference.predict.core import predict_proba_image
    from biomedseg.io.pixel_size import pixel_size
    from biomedseg.postprocess.ops import apply_postprocess

    raw = predict_proba_image(loaded, predictor, image, pixel_size(path))
    proba = tempered(raw, temperature)
    if post is None:
        return class_argmax(proba), proba, raw
    p_image = getattr(predictor, "last_image_probability", None)
    mask, _ = apply_postprocess(proba, post, loaded.classes, loaded.background, image_probability=p_image)
    return mask, proba, raw


def _valid_region(valid_dir, sid: str) -> np.ndarray | None:
    """The boolean valid-region mask of ``sid`` in ``valid_dir`` (``None`` without a folder)."""
    from biomedseg.io import read_raw

    if valid_dir is None:
        return None
    vp = next(iter(sorted(Path(valid_dir).glob(f"{sid}.*"))), None)
    if vp is None:
        raise UserError(f"{valid_dir}: no valid-region mask for {sid}")
    valid = np.asarray(read_raw(vp)) > 0
    return valid if valid.ndim == 2 else valid.any(-1)


def _write_results(out: Path, metrics: dict, rows: list[dict], overlay_paths, curves: Path, title: str) -> None:
    """``metrics.json``, ``per_image.csv`` (when there are rows) and ``report.html`` in ``out``."""
    from biomedseg.io import write_json, write_text
    from biomedseg.reports.html import write_evaluation_report

    write_json(out / "metrics.json", _finite(metrics))
    if rows:
        buf = io.StringIO()
        columns: list[str] = []
        for r in rows:  # images differ in keys when only some have a pixel size
            columns += [k for k in r if k not in columns]
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
        write_text(out / "per_image.csv", buf.getvalue())
    write_evaluation_report(
        out, metrics, rows, overlay_paths, title=title, curves_png=curves if curves.is_file() else None
    )


def format_metrics(m: dict) -> str:
    """The metrics dict of :func:`evaluate` as text: pooled scores, then one line per class."""
    lines = [
        f"dice {m['dice']:.4f}  iou {m['iou']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
        f"pixel_accuracy {m['pixel_accuracy']:.4f}  image_dice {m.get('image_dice', float('nan')):.4f}"
    ]
    for name, d in m["per_class"].items():
        lines.append(
            f"  {name:16s} dice {d['dice']:.4f}  iou {d['iou']:.4f}  precision {d['precision']:.4f}  "
            f"recall {d['recall']:.4f}  fp {d['fp']}  fn {d['fn']}"
        )
    f = m.get("field")
    if f:
        lines.append(f"field metrics ({', '.join(f['groups'])}): {f['reason']}")
        keys = [k for g in f["groups"] if g != "pixel" for k in GROUPS[g] if isinstance(m.get(k), float)]
        for i in range(0, len(keys), 6):
            lines.append("  " + "  ".join(f"{k} {m[k]:.4f}" for k in keys[i : i + 6]))
        for name in m.get("classes", []):  # per-class values exist with several foreground classes
            own = [k for k in keys if isinstance(m.get(f"{k}_{name}"), float)]
            if own:
                lines.append(f"  {name:16s} " + "  ".join(f"{k} {m[f'{k}_{name}']:.4f}" for k in own))
    lines += format_reliability(m)
    return "\n".join(lines)


def _finite(obj):
    """Replace NaN/inf by None so metrics.json is strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
