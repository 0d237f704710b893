"""What ``predict`` says about each prediction: ``predictions.csv``, ``--uncertainty`` maps and
out-of-distribution warnings (the :class:`~biomedseg.inference.predict.hooks.PredictHooks` that
``biomedseg.predict`` and the ``predict`` command pass; :func:`trust_hooks`).

- ``OUT/predictions.csv`` (:data:`PREDICTIONS_CSV`, written atomically after the batch): one row per
  input, ``file`` then the columns of :func:`~.rows.prediction_row` (size, per-class areas and object
  counts, mean foreground probability, the per-image ``uncertainty`` score, ``ood_score``,
  ``ood_flag``, ``ood_reasons``), ``uncertainty_source`` and ``note`` (why a value is empty, or the
  error of a failed input). Rows of inputs skipped as already predicted are kept from the previous
  ``predictions.csv``. Streamed (huge) inputs: areas, mean foreground probability and the
  expected-Dice-loss score are accumulated band by band; objects and OOD scores are left empty (noted).
- ``--uncertainty``: ``<stem>_uncertainty.tif``, float16 ``(H, W)`` OME-TIFF with the input's pixel
  size; streamed inputs band by band (a temporary OME-Zarr, then a tiled OME-TIFF as the masks).
  Source (:data:`UNCERTAINTY_SOURCES`): the normalised entropy of the (tempered) softmax; with
  ``--tta``, the mutual information between the TTA transforms (each transform's pass blended on
  its own: together they are exactly the TTA pass, so no extra network cost); for a CV or
  ensemble folder, the mutual information between the members (one pass).
- OOD: every plain input is scored against the run's description (``RUN/trust.json``, an export's
  ``trust`` metadata; a CV/ensemble folder without its own: its first member's, scored on that
  member's part of the features) with :func:`~.ood.ood_scores`, on the bottleneck features of the
  prediction pass itself; a flagged input gets one warning line (its mask is written all the
  same), and the batch one summary line. No description: the OOD columns stay empty.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch

from biomedseg.inference.predict.hooks import PredictHooks

log = logging.getLogger("biomedseg")

PREDICTIONS_CSV = "predictions.csv"
#: ``uncertainty_source`` values: plain prediction, TTA transforms, ensemble/CV members
UNCERTAINTY_SOURCES = ("entropy", "tta_mutual_information", "member_mutual_information")
UNCERTAINTY_SUFFIX = "_uncertainty.tif"


def description_of(loaded) -> tuple[dict | None, bool]:
    """``(description or None, from_first_member)`` of a loaded run, CV/ensemble folder or export."""
    from biomedseg.trust.descriptor import read_description

    meta = getattr(loaded, "metadata", None)
    if isinstance(meta, dict):  # an exported file (ExportedRun)
        return meta.get("trust"), False
    own = read_description(loaded.run_dir)
    if own is not None or loaded.run is None or loaded.run.info().kind == "run":
        return own, False
    from biomedseg.runs.ensemble import ensemble_members

    members = ensemble_members(loaded.run)
    first = read_description(members[0][0].root) if members else None
    return first, first is not None


def trust_hooks(loaded, options) -> TrustHooks:
    """The ``hooks`` factory of :func:`biomedseg.inference.predict.batch.predict`; an unreadable
    description is a warning (no OOD scores), never a failed batch."""
    try:
        description, first_member = description_of(loaded)
    except (OSError, ValueError) as exc:
        log.warning("%s: training description unreadable (%s); no out-of-distribution scores", loaded.run_dir, exc)
        description, first_member = None, False
    return TrustHooks(loaded, options, description, first_member)


def _ensemble(model):
    from biomedseg.engine.ensemble_model import EnsembleModel

    return model if isinstance(model, EnsembleModel) else None


class TrustHooks(PredictHooks):
    """Rows, uncertainty maps and OOD scores of one ``predict`` call (see the module docstring)."""

    def __init__(self, loaded, options, description: dict | None, first_member: bool = False):
        self.options = options
        self.description = description
        self.first_member = first_member
        self.rows: dict[str, dict] = {}
        self.write_csv = True
        self.flagged: list[Path] = []
        self._last: tuple = (None, None, "entropy")  # features, samples, source of the last image
        self._bands: dict = {}  # input -> its streamed.BandStats

    # ------------------------------------------------------------------ plain inputs
    def probabilities(self, prepared, path, image, pixel_size) -> np.ndarray:
        from biomedseg.inference.predict.core import predict_logits_image
        from biomedseg.metrics.uncertainty import mutual_information_map
        from biomedseg.trust.features import tapped

        predictor, run = prepared.predictor, prepared.run
        ens = _ensemble(run.model)
        per_transform = self.options.uncertainty and ens is None and len(predictor.transforms) > 1
        with tapped(predictor) as tap:
            if per_transform:
                logits, umap = self._transform_passes(prepared, image, pixel_size)
            else:
                logits, umap = predict_logits_image(run, predictor, image, pixel_size), None
        proba = predictor.to_proba(logits).numpy()
        source = "tta_mutual_information" if umap is not None else "entropy"
        if ens is not None and self.options.uncertainty:  # the members' tempered softmax, from the same pass
            m, k = len(ens.members), ens.n_classes
            z = logits.float().reshape(m, k, *logits.shape[1:]) / prepared.temperature
            umap, source = mutual_information_map(torch.softmax(z, dim=1).numpy()), "member_mutual_information"
        self._last = (tap.vector(), umap, source)
        return proba

    def _transform_passes(self, prepared, image, pixel_size):
        """Each TTA transform's blended logits on its own (their mean is the TTA pass's logits:
        blending is linear); ``(mean logits, (H, W) mutual information of the transforms' tempered
        probabilities)``, accumulated pass by pass (three image-sized buffers, whatever the number of
        transforms). A network with a classifier head also gets the ordinary TTA pass (its image
        probability)."""
        from biomedseg.inference.predict.core import predict_logits_image
        from biomedseg.metrics.uncertainty import entropy_map

        predictor = prepared.predictor
        transforms, n = predictor.transforms, len(predictor.transforms)
        total = sum_p = sum_h = None
        try:
            for t in transforms:
                predictor.transforms = [t]
                z = predict_logits_image(prepared.run, predictor, image, pixel_size)
                p = predictor.to_proba(z).numpy()
                total = z if total is None else total + z
                sum_p = p if sum_p is None else sum_p + p
                sum_h = entropy_map(p) if sum_h is None else sum_h + entropy_map(p)
        finally:
            predictor.transforms = transforms
        umap = np.clip(entropy_map(sum_p / n) - sum_h / n, 0.0, 1.0).astype(np.float32)
        if getattr(predictor, "has_head", False):
            return predict_logits_image(prepared.run, predictor, image, pixel_size), umap
        return total / n, umap

    def extras(self, prepared, path, out, stem, image, pixel_size, proba, mask) -> list[Path]:
        from biomedseg.trust.rows import prediction_row

        features, umap, source = self._last
        self._last = (None, None, "entropy")
        note = ""
        try:
            ood = self._ood(prepared, path, image, pixel_size, features)
        except Exception as exc:  # noqa: BLE001 - the OOD score never costs the input its mask
            ood, note = None, f"no out-of-distribution score ({type(exc).__name__}: {exc})"
            log.warning("%s: %s", path, note)
        row = prediction_row(proba, prepared.run.classes, prepared.run.background, mask=mask, ood=ood)
        self.rows[str(path)] = {"file": str(path), **row, "uncertainty_source": source, "note": note}
        if not self.options.uncertainty:
            return []
        return [_write_uncertainty(out / f"{stem}{UNCERTAINTY_SUFFIX}", proba, umap, pixel_size)]

    def _ood(self, prepared, path, image, pixel_size, features) -> dict | None:
        from biomedseg.trust.ood import ood_scores

        desc = self.description
        if desc is None:
            return None
        dim = (desc.get("features") or {}).get("dim")
        if features is not None and self.first_member and dim is not None:
            features = features[:dim]  # an ensemble's vector: the members' in order
        if features is None or dim is None or len(features) != dim:
            desc, features = {**desc, "features": None}, None  # never a second network pass
        ood = ood_scores(prepared.run, desc, image, pixel_size, features=features)
        if ood["flag"]:
            self.flagged.append(Path(path))
            log.warning("%s: unlike the training data (%s); mask written", path, "; ".join(ood["reasons"]))
        return ood

    # ------------------------------------------------------------------ streamed inputs
    def streamed_decider(self, prepared, path, out, stem, decide):
        from biomedseg.stream.sources import open_source
        from biomedseg.trust.streamed import BandStats

        with open_source(path, self.options.level) as src:  # the header: what the streamed mask gets
            shape, px = src.shape, src.pixel_size
        target = out / f"{stem}{UNCERTAINTY_SUFFIX}" if self.options.uncertainty else None
        stats = BandStats(prepared.run.classes, prepared.run.background, decide, shape, px, target)
        self._bands[str(path)] = stats
        return stats

    def streamed(self, prepared, path, out, stem) -> list[Path]:
        stats = self._bands.pop(str(path))
        row = stats.row()
        self.rows[str(path)] = {"file": str(path), **row, "uncertainty_source": "entropy", "note": stats.note()}
        written = stats.finish(out / f"{stem}{UNCERTAINTY_SUFFIX}")
        return [written] if written is not None else []

    # ------------------------------------------------------------------ the batch
    def finish(self, prepared, files, out, summary) -> None:
        """The batch's rows and flagged inputs go into ``summary`` (``rows``, ``flagged``); with
        ``write_csv`` (not in a Dask task: the client writes) ``predictions.csv`` is written."""
        for path, _ in summary.failed:
            stats = self._bands.pop(str(path), None)
            if stats is not None:
                stats.discard()
        summary.rows.extend(self.rows.values())
        summary.flagged.extend(self.flagged)
        self.rows, self.flagged = {}, []
        if self.write_csv:
            write_rows(out, files, summary)
            if self.description is None:
                log.info("%s: no training description (trust.json): no OOD scores", prepared.run.run_dir)


def trust_rows(loaded, options) -> TrustHooks:
    """:func:`trust_hooks` for one Dask task: rows in the summary, ``predictions.csv`` left to the
    client (:func:`write_rows`)."""
    hooks = trust_hooks(loaded, options)
    hooks.write_csv = False
    return hooks


def write_rows(out: Path, files: list[Path], summary, warn_each: bool = False) -> Path:
    """``OUT/predictions.csv`` from ``summary.rows`` (a row naming a resolved path is filed under
    the input as given), a row with the error of each failed input, and one warning line counting
    the flagged inputs (``warn_each``: one line per flagged input first, as in a local batch).
    Sets ``summary.predictions``."""
    given = {str(Path(f).resolve()): str(f) for f in files}
    rows = {}
    for r in summary.rows:
        name = given.get(r["file"], r["file"])
        rows[name] = {**r, "file": name}
    for path, message in summary.failed:  # failed after its row was made (e.g. writing the mask): the error
        name = given.get(str(path), str(path))
        rows[name] = {"file": name, "note": message}
    if warn_each:
        for r in rows.values():
            if r.get("ood_flag"):
                log.warning("%s: unlike the training data (%s); mask written", r["file"], r["ood_reasons"])
    summary.predictions = write_predictions_csv(Path(out) / PREDICTIONS_CSV, files, rows)
    if summary.flagged:
        log.warning(
            "%d of %d input(s) unlike the training data (ood_flag in %s)",
            len(summary.flagged),
            len(files),
            summary.predictions,
        )
    return summary.predictions


def _write_uncertainty(path: Path, proba, umap, pixel_size) -> Path:
    """``(H, W) float16`` OME-TIFF: ``umap`` (the mutual information of TTA transforms or members)
    when given, else the entropy of ``proba``."""
    from biomedseg.io.ome import write_ome_tiff
    from biomedseg.trust.rows import uncertainty_image

    write_ome_tiff(path, uncertainty_image(proba) if umap is None else np.asarray(umap, np.float16), pixel_size)
    return path


def read_predictions_csv(path: Path) -> list[dict]:
    """The rows of a ``predictions.csv`` (empty when there is none)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_predictions_csv(path: Path, files: list[Path], rows: dict[str, dict]) -> Path:
    """``predictions.csv`` (atomic): the previous file's rows, replaced by or followed by this batch's
    (``rows``, keyed by input); inputs of ``files`` without a row (skipped, already predicted) keep
    their previous row, or get a note."""
    from biomedseg.io.writers import write_text

    merged = {r["file"]: r for r in read_predictions_csv(path)}
    for f in files:
        key = str(f)
        if key in rows:
            merged[key] = rows[key]
        elif key not in merged:
            merged[key] = {"file": key, "note": "already predicted (its mask exists); no row from before"}
    columns: list[str] = ["file"]
    for r in merged.values():
        columns += [c for c in r if c not in columns]
    columns = [c for c in columns if c != "note"] + ["note"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n", restval="")
    writer.writeheader()
    for r in merged.values():
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    write_text(path, buf.getvalue())
    return path
