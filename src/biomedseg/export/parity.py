"""The parity check ``biomedseg export`` runs before it keeps an exported file.

The exported network, loaded back from the file as ``predict`` loads it, and the run's PyTorch
network (fp32, CPU) predict the same images through the same sliding window (same tiles,
Gaussian blending, padding); their softmax probabilities must agree to
:data:`MAX_ABS_DIFF` (largest absolute difference over all pixels and classes) and their argmax
masks on at least :data:`MIN_AGREEMENT` of the pixels.

The images are the run's own validation images (``dataset.json`` split ``val`` of its training
data, at most :data:`MAX_IMAGES`); when that folder is gone (or has no validation split),
synthetic images drawn from the normalisation statistics (per-channel normal noise with the
training mean and standard deviation, one image larger than a patch and one smaller), and the
report says so.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError

log = logging.getLogger("biomedseg")

#: fp32: another runtime's kernels sum in another order; through a deep network with instance norms
#: that moved probabilities by up to 3.85e-4 on a trained run (dsb2018_nuclei, 5-minute default
#: plan; argmax agreeing on 99.9999% of 1.77 M pixels), which 1e-4 refused. A wrong graph or wrong
#: weights move them by 1e-2 and more; the argmax agreement below is the decisive check.
MAX_ABS_DIFF = 1e-3
MIN_AGREEMENT = 0.9999
MAX_IMAGES = 8  # validation images checked at most (the first ones of the split)
SYNTHETIC_SEED = 0


@dataclass
class ParityReport:
    """The numbers of one parity check (one exported network against PyTorch)."""

    engine: str
    inputs: str  # what the images were
    ids: list[str] = field(default_factory=list)
    pixels: int = 0
    max_abs_diff: float = 0.0
    argmax_agreement: float = 1.0
    limit_abs_diff: float = MAX_ABS_DIFF  # looser for an int8 export (export.quantize)
    limit_agreement: float = MIN_AGREEMENT

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit_abs_diff and self.argmax_agreement >= self.limit_agreement

    def summary(self) -> str:
        return (
            f"{self.engine}: max |p - p_torch| {self.max_abs_diff:.2e} (<= {self.limit_abs_diff:g}), argmax agreement "
            f"{100 * self.argmax_agreement:.4f}% (>= {100 * self.limit_agreement:g}%) on {len(self.ids)} {self.inputs} "
            f"({self.pixels} pixels)"
        )

    def to_json(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "passed": self.passed,
            "thresholds": {"max_abs_diff": self.limit_abs_diff, "min_argmax_agreement": self.limit_agreement},
        }


def validation_images(loaded, max_images: int = MAX_IMAGES) -> tuple[list[tuple[str, np.ndarray]], str]:
    """``([(id, raw (H, W, C) image)], description)``: the run's validation images, or synthetic
    ones when its training data is gone or has no validation split."""
    from biomedseg.data.splits import select_split
    from biomedseg.io import read_image

    try:
        source, ids, by_id = select_split(loaded, None, None, None, "val")
    except UserError as exc:  # the description is shared with the export: names, not paths
        log.info("parity on synthetic images: %s", exc)
        data = Path(loaded.info.source).name if loaded.info.source else "?"
        description = f"synthetic images from the normalisation statistics (training data {data} not readable here)"
        return synthetic_images(loaded), description
    images = [(sid, read_image(by_id[sid].image)) for sid in ids[:max_images]]
    return images, f"validation images of {source.root.name}"


def synthetic_images(loaded, seed: int = SYNTHETIC_SEED) -> list[tuple[str, np.ndarray]]:
    """Two ``(H, W, C) float32`` images of per-channel normal noise with the training mean/std:
    one spanning several tiles (sizes not multiples of anything), one smaller than a patch."""
    rng = np.random.default_rng(seed)
    p = int(loaded.tile_size)
    mean = np.asarray(loaded.normalizer.mean, np.float32)
    std = np.asarray(loaded.normalizer.std, np.float32)
    shapes = [(p + p // 2 + 7, 2 * p + 3), (max(p // 2 + 5, 8), max(p // 2 + 9, 8))]
    return [
        (f"synthetic_{h}x{w}", (rng.standard_normal((h, w, len(mean))) * std + mean).astype(np.float32))
        for h, w in shapes
    ]


def check_parity(
    reference,
    exported,
    images: list[tuple[str, np.ndarray]],
    description: str,
    max_abs_diff: float = MAX_ABS_DIFF,
    min_agreement: float = MIN_AGREEMENT,
) -> ParityReport:
    """Compare ``exported`` (an ExportedRun) with ``reference`` (the run, PyTorch) on ``images``."""
    from biomedseg.inference.predict.core import predict_proba_image

    ref = dataclasses.replace(reference, precision="fp32")
    ref_predictor, exp_predictor = ref.predictor(), exported.predictor()
    report = ParityReport(
        engine=exported.engine, inputs=description, limit_abs_diff=max_abs_diff, limit_agreement=min_agreement
    )
    agree = 0
    for sid, image in images:
        p_ref = predict_proba_image(ref, ref_predictor, image)
        p_exp = predict_proba_image(exported, exp_predictor, image)
        report.ids.append(sid)
        report.max_abs_diff = max(report.max_abs_diff, float(np.abs(p_ref - p_exp).max()))
        agree += int((p_ref.argmax(0) == p_exp.argmax(0)).sum())
        report.pixels += int(p_ref[0].size)
    report.argmax_agreement = agree / max(report.pixels, 1)
    return report
