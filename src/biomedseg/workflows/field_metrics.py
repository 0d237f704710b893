"""The field metrics part of ``evaluate`` (issue 25): which metrics, truth instances, outputs.

- :func:`choose_for_split`: the metric groups of a split (``--metrics``, ``dataset.json``
  ``"metrics"``, or the fingerprint of up to ``FINGERPRINT_IMAGES`` truth masks of the split).
- :func:`truth_instances`: ``DATA/instances/<id>.png|.tif`` (uint16 ids) of one image, checked
  against its semantic mask. A missing or mismatching file is logged as a warning naming the file
  and that image's object/instance scores stay empty; when no image of the split has a usable
  file, :class:`InstanceCheck` raises ``UserError`` (nothing can be computed).
- :func:`field_summary`: the ``metrics.json`` entry (choice, reason, conventions, tolerance).
- :func:`write_per_object`: ``per_object.csv``.
- :class:`FieldScorer`: all of it for one split, image by image (``evaluate``, the CV's
  out-of-fold scores).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.metrics.boundary import BoundaryOptions
from biomedseg.metrics.choice import FINGERPRINT_IMAGES, MetricChoice, choose_metrics, parse_metric_names
from biomedseg.metrics.field import FieldAccumulator, FieldOptions, ImagePair

log = logging.getLogger("biomedseg")

INSTANCES_DIR = "instances"
INSTANCE_SUFFIXES = (".png", ".tif", ".tiff")
#: what the empty cases score, as the report states it
CONVENTIONS = {
    "boundary": "a class absent from prediction and truth: hd95 = assd = 0, nsd = 1; present in only one: "
    "hd95 = assd = the image diagonal (worst distance), nsd = 0",
    "object": "no object on either side: object_f1 = object_dice = 1, object_hausdorff = 0; objects on one "
    "side only: 0 and the image diagonal",
    "instance": "no object on either side: aji, aji_plus, pq, sq, rq, ap = 1; objects on one side only: 0",
    "thin": "no truth foreground: rand = vi_score = 1, vi = 0; clDice: both empty 1, one empty 0",
    "shape": "an empty prediction has circumference 0 (error = the true circumference); both empty: error 0",
}


def choose_for_split(requested, source, samples, palette, strict_index: bool, background) -> MetricChoice:
    """The :class:`MetricChoice` of a split (``samples``: its labelled samples)."""
    from biomedseg.io import read_mask

    listed = (source.meta or {}).get("metrics")
    if listed and not requested:  # a bad name there: one line naming the file
        parse_metric_names(
            [listed] if isinstance(listed, str) else listed, f'{Path(source.root) / "dataset.json"}: "metrics"'
        )
    if requested or listed:
        return choose_metrics(requested, source.meta)
    step = max(1, len(samples) // FINGERPRINT_IMAGES)
    masks = (read_mask(s.mask, palette, strict_index=strict_index)[0] for s in samples[::step][:FINGERPRINT_IMAGES])
    return choose_metrics(None, source.meta, masks, background)


@dataclass
class InstanceCheck:
    """Truth instance masks of a split: ``folder`` (``None`` when the data has none)."""

    folder: Path | None
    usable: int = 0
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, source) -> "InstanceCheck":
        folder = Path(source.root) / INSTANCES_DIR
        return cls(folder if folder.is_dir() else None)

    def read(self, image_id: str, target: np.ndarray, background) -> tuple[np.ndarray | None, bool]:
        """``(instance ids or None, whether object scores can be computed for this image)``."""
        if self.folder is None:
            return None, True
        path = next(
            (self.folder / f"{image_id}{s}" for s in INSTANCE_SUFFIXES if (self.folder / f"{image_id}{s}").is_file()),
            None,
        )
        problem = None
        if path is None:
            problem = f"{self.folder / image_id}.png: instance mask missing"
        else:
            inst, problem = _checked(path, target, background)
        if problem is not None:
            log.warning("%s; object and instance scores of %s left empty", problem, image_id)
            self.problems.append(problem)
            return None, False
        self.usable += 1
        return inst, True

    def finish(self) -> None:
        """Raise when instance masks exist but none could be used."""
        if self.folder is not None and self.usable == 0 and self.problems:
            raise UserError(f"{self.folder}: no usable instance mask ({self.problems[0]})")


def _checked(path: Path, target: np.ndarray, background) -> tuple[np.ndarray | None, str | None]:
    """Read an instance mask; ``(ids, None)`` or ``(None, problem)``."""
    from biomedseg.io import read_raw

    try:
        inst = np.asarray(read_raw(path))
    except UserError as e:
        return None, str(e)
    if inst.ndim != 2 or inst.dtype.kind not in "iu":
        return None, f"{path}: instance mask must be one channel of integer ids, got {inst.dtype} {inst.shape}"
    if inst.shape != target.shape:
        return None, f"{path}: instance mask {inst.shape} differs from the mask's shape {target.shape}"
    fg = target != (background if background is not None else 0)
    outside = int(np.count_nonzero((inst > 0) & ~fg))
    missing = int(np.count_nonzero((inst == 0) & fg))
    if outside or missing:
        return None, (
            f"{path}: instance ids do not match the semantic mask ({outside} object pixels on background, "
            f"{missing} foreground pixels without an id)"
        )
    return inst, None


def field_summary(choice: MetricChoice, options) -> dict:
    """The ``metrics.json`` ``field`` entry."""
    return {
        "groups": list(choice.groups),
        "source": choice.source,
        "reason": choice.reason,
        "fingerprint": choice.fingerprint,
        "nsd_tolerance_px": options.boundary.nsd_tolerance_px,
        "nsd_tolerance_um": options.boundary.nsd_tolerance_um,
        "conventions": {g: CONVENTIONS[g] for g in choice.groups if g in CONVENTIONS},
    }


def write_per_object(out: Path, rows: list[dict]) -> Path | None:
    """``out/per_object.csv`` (one row per true and predicted object), when there are objects."""
    from biomedseg.io import write_text

    if not rows:
        return None
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    write_text(out / "per_object.csv", buf.getvalue())
    return out / "per_object.csv"


@dataclass
class FieldScorer:
    """The field metrics of one split: the choice, its accumulator, the truth instances and the
    data's ``dataset.json`` (for stated pixel sizes)."""

    choice: MetricChoice
    acc: FieldAccumulator
    instances: InstanceCheck
    meta: dict | None = None

    @classmethod
    def for_data(cls, requested, source, samples, info, nsd_tolerance_um: float | None = None) -> "FieldScorer":
        """``info``: the run's dataset record (``classes``, ``background``, ``palette``, ``strict_index``)."""
        from biomedseg.io import Palette

        choice = choose_for_split(
            requested, source, samples, Palette.from_json(info.palette), info.strict_index, info.background
        )
        options = FieldOptions(choice.groups, BoundaryOptions(nsd_tolerance_um=nsd_tolerance_um))
        return cls(
            choice, FieldAccumulator(info.classes, info.background, options), InstanceCheck.of(source), source.meta
        )

    @property
    def wants_objects(self) -> bool:
        return bool({"object", "instance"} & set(self.choice.groups))

    def score(self, sample, pred, target, valid=None, pred_instances=None) -> None:
        """Add one image (``pred_instances``: ``{class: labels}`` of a watershed step, else connected
        components; the pixel size ``dataset.json`` states, else the file's)."""
        from biomedseg.io.pixel_size import resolve_pixel_size

        if not self.acc.options.active:
            self.acc.rows.append({"id": sample.id})
            return
        true_inst, ok = self.instances.read(sample.id, target, self.acc.background)
        size = resolve_pixel_size(sample.image, self.meta, sample.id)[0]
        self.acc.update(
            ImagePair(
                sample.id,
                pred,
                target,
                valid=valid,
                pixel_size=size,
                true_instances=true_inst,
                pred_instances=pred_instances if ok else None,
                score_objects=ok,
            )
        )

    def summary(self) -> dict:
        return field_summary(self.choice, self.acc.options)
