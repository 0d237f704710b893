"""Out-of-fold predictions of a cross-validation folder (:mod:`biomedseg.runs.cv`).

Every image of the training pool is predicted by the one fold that did not train on it (the
fold's best checkpoint, plain argmax for the scores). :func:`predict_fold_oof` predicts one
fold's validation images, stores their probabilities (``CV/oof/<id>.npy``, float16) and returns
the fold's record: its confusion matrix and per-image rows (pooled over the folds they give the
out-of-fold metrics; with the field metrics that ``dataset.json`` or the fingerprint of the whole
pool chooses, :mod:`biomedseg.workflows.field_metrics`) and the image-level head's probabilities
when the network has a head.
:func:`out_of_fold` yields the stored predictions again (``tune-postprocess CV``), or predicts
them anew when another test-time augmentation is asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.engine.sliding_window import normalize_tta
from biomedseg.runs.cv import DONE, CVFolder

log = logging.getLogger("biomedseg")


def pool_samples(cv: CVFolder, with_source: bool = False):
    """``{id: Sample}`` of the CV's data folder (``folds.json`` ``data``); with ``with_source`` also
    its :class:`~biomedseg.data.discovery.DataSource`."""
    from biomedseg.data.discovery import find_pairs, resolve_data

    data = cv.folds().get("data")
    source = resolve_data(data)
    samples = {s.id: s for s in find_pairs(source.images_dir, source.masks_dir)}
    return (samples, source) if with_source else samples


def _predict_fold(cv: CVFolder, i: int, tta: str, device: str, quiet: bool, samples: dict) -> Iterator[tuple]:
    """``(sample, (K, H, W) float32 probabilities, image probability or None)`` of each validation
    image of fold ``i``, predicted by the fold's run."""
    from tqdm.auto import tqdm

    from biomedseg.inference.predict.core import predict_proba_image
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image
    from biomedseg.io.pixel_size import pixel_size

    loaded = load_run(cv.fold_dir(i), device=device)
    predictor = loaded.predictor(tta=tta)
    ids = cv.folds()["folds"][i]["val"]
    missing = [sid for sid in ids if sid not in samples]
    if missing:
        raise UserError(
            f"{cv.folds_json}: fold {i} names images that are gone from the data ({', '.join(missing[:5])})"
        )
    for sid in tqdm(
        ids, desc=f"fold {i}: out-of-fold", unit="img", disable=True if (quiet or len(ids) < 2) else None, leave=False
    ):
        s = samples[sid]
        proba = predict_proba_image(loaded, predictor, read_image(s.image), pixel_size(s.image))
        yield s, proba, predictor.last_image_probability


def predict_fold_oof(cv: CVFolder, i: int, tta: str = "none", device: str = "auto", quiet: bool = False) -> dict:
    """Predict fold ``i``'s validation images, store ``CV/oof/<id>.npy`` and return its record:
    ``{"status": "done", "tta", "ids", "confusion", "rows", "image_probability", "scores"}``."""
    from biomedseg.io import Palette, read_mask
    from biomedseg.metrics.pixel import MetricAccumulator
    from biomedseg.workflows.field_metrics import FieldScorer

    info = cv.fold(i).dataset()
    palette = Palette.from_json(info.palette)
    acc = MetricAccumulator(len(info.classes), info.classes, info.background)
    image_probability = {}
    tta = normalize_tta(tta)
    samples, source = pool_samples(cv, with_source=True)
    pool = [samples[sid] for sid in cv.folds()["pool"] if sid in samples]
    field = FieldScorer.for_data(None, source, pool, info)
    for s, proba, p_image in _predict_fold(cv, i, tta, device, quiet, samples):
        cv.save_oof(s.id, proba)
        target, _ = read_mask(s.mask, palette, strict_index=info.strict_index)
        pred = proba.argmax(0).astype(np.uint8)
        acc.update(pred, target, image_id=s.id)
        field.score(s, pred, target)
        image_probability[s.id] = p_image
    field.instances.finish()
    rows = [{**r, **{k: v for k, v in f.items() if k != "id"}} for r, f in zip(acc.per_image_rows(), field.acc.rows)]
    return {
        "status": DONE,
        "tta": tta,
        "ids": [r["id"] for r in rows],
        "confusion": acc.cm.tolist(),
        "rows": rows,
        "image_probability": image_probability,
        "scores": {**acc.summary(), **field.acc.summary()},
        "field": field.summary(),
    }


def out_of_fold(cv: CVFolder, tta: str = "none", device: str = "auto", quiet: bool = True) -> Iterator[tuple]:
    """``(sample, probabilities, image probability or None)`` of every training-pool image, from the
    fold that did not train on it: the stored ``CV/oof/<id>.npy`` when they were made with ``tta``,
    else predicted now (not stored)."""
    tta = normalize_tta(tta)
    samples = pool_samples(cv)
    for i in range(cv.n_folds()):
        record = cv.fold_record(i)
        if record.get("status") != DONE:
            raise UserError(
                f"{cv.root}: fold {i} has no out-of-fold predictions yet; run `biomedseg cv` again to finish the CV"
            )
        if record.get("tta") == tta:
            for sid in record["ids"]:
                yield samples[sid], cv.load_oof(sid), record["image_probability"].get(sid)
        else:
            log.info(
                "fold %d: out-of-fold predictions were stored with TTA %s; predicting with %s",
                i,
                record.get("tta"),
                tta,
            )
            yield from _predict_fold(cv, i, tta, device, quiet, samples)
