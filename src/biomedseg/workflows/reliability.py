"""How far a run's probabilities can be trusted on labelled images (issue 22): the per-image
uncertainty columns of ``evaluate`` with how well they rank the errors, and the calibration
temperature (fitted by ``tune-postprocess`` and ``cv``, reported by ``evaluate``).

- :class:`ReliabilityScorer`: per image, the scores of
  :data:`~biomedseg.metrics.uncertainty.IMAGE_SCORES` on the probabilities at the run's temperature
  (``uncertainty`` is :data:`~biomedseg.metrics.uncertainty.DEFAULT_SCORE`) and a seeded sample of
  labelled pixels; at the end Spearman(score, per-image Dice), the risk-coverage numbers (AURC,
  Dice kept when the most uncertain 10/20/50% go to review) and the expected calibration error at
  temperature 1 and at the run's temperature.
- :func:`pixel_sample` / :func:`fit_calibration`: the temperature minimising the pixels' negative
  log-likelihood (:func:`~biomedseg.metrics.calibration.fit_temperature_maps`), shrunk toward 1 when
  the images disagree or are few (:func:`shrunk_temperature`), with the ECE before and after it;
  :func:`calibrate_cv`: the same over a CV folder's out-of-fold predictions, stored in
  ``CV/postprocess.yaml`` ``temperature`` (the rest of the file is kept).

Pixels are sampled from each image's labelled (and valid) pixels: at least
``MIN_PIXELS_PER_IMAGE``, else an equal share of
:data:`~biomedseg.metrics.calibration.MAX_PIXELS`, so the cost stays bounded on many or huge images.
"""

from __future__ import annotations

import logging

import numpy as np

from biomedseg.metrics.calibration import (
    MAX_PIXELS,
    expected_calibration_error,
    fit_temperature_maps,
    temper_probabilities,
)
from biomedseg.metrics.uncertainty import DEFAULT_SCORE, IMAGE_SCORES, image_scores, uncertainty_ranking

log = logging.getLogger("biomedseg")

#: Fewest labelled pixels sampled per image for the ECE and the temperature fit.
MIN_PIXELS_PER_IMAGE = 2000


def pixels_per_image(n_images: int) -> int:
    """Pixels sampled from each of ``n_images`` images (see module)."""
    return max(MIN_PIXELS_PER_IMAGE, MAX_PIXELS // max(1, n_images))


def pixel_sample(proba, target, n: int, seed: int, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """``((K, m) float32 probabilities, (m,) int64 labels)`` of at most ``n`` labelled pixels of one
    image (class index ``< K``, inside ``valid`` when given), chosen with ``seed``."""
    p = np.asarray(proba)
    k = p.shape[0]
    y = np.asarray(target).reshape(-1)
    keep = y < k
    if valid is not None:
        keep &= np.asarray(valid, bool).reshape(-1)
    idx = np.flatnonzero(keep)
    if idx.size > n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
    return p.reshape(k, -1)[:, idx].astype(np.float32), y[idx].astype(np.int64)


def calibration_block(samples: list[tuple[np.ndarray, np.ndarray]], temperature: float) -> dict:
    """``{"temperature", "ece_before" (T = 1), "ece_after" (at ``temperature``), "n_pixels"}`` of
    :func:`pixel_sample` samples."""
    if not samples:
        return {"temperature": float(temperature), "ece_before": None, "ece_after": None, "n_pixels": 0}
    p = np.concatenate([s[0] for s in samples], axis=1)
    y = np.concatenate([s[1] for s in samples])
    after = p if temperature == 1.0 else temper_probabilities(p, temperature)
    return {
        "temperature": float(temperature),
        "ece_before": expected_calibration_error(p, y),
        "ece_after": expected_calibration_error(after, y),
        "n_pixels": int(y.size),
    }


def shrunk_temperature(pooled: float, per_image: list[float]) -> tuple[float, float]:
    """``(temperature, weight)``: ``pooled`` (fitted on all images' pixels) shrunk toward 1 in
    ``log T`` by the positive-part James-Stein weight ``max(0, 1 - se^2 / log(pooled)^2)``, where
    ``se^2`` is the variance of the per-image ``log T`` over the images divided by their number: the
    images, not the pixels, are the independent evidence that the temperature carries to new
    images. Temperatures that agree across many images are kept; two images that disagree (or a
    single one) give ``T = 1``, the network's own probabilities."""
    logs = np.log(np.asarray(per_image, dtype=np.float64))
    m = float(np.log(pooled))
    if logs.size < 2 or m == 0.0:
        return (1.0 if logs.size < 2 else float(pooled)), (0.0 if logs.size < 2 else 1.0)
    se2 = float(logs.var(ddof=1)) / logs.size
    w = max(0.0, 1.0 - se2 / m**2)
    return float(np.exp(w * m)), w


def fit_calibration(samples: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The temperature fitted on ``samples`` (:func:`pixel_sample`, one per image), shrunk toward 1 by
    how much the images agree (:func:`shrunk_temperature`), and :func:`calibration_block` at it;
    ``temperature_fitted``: before the shrinkage, ``temperature_weight``: the weight, ``n_images``."""
    samples = [s for s in samples if s[1].size]
    if not samples:
        return {**calibration_block(samples, 1.0), "temperature_fitted": 1.0, "temperature_weight": 0.0, "n_images": 0}
    pooled = fit_temperature_maps([s[0] for s in samples], [s[1] for s in samples])
    per_image = [fit_temperature_maps([p], [y]) for p, y in samples]
    t, w = shrunk_temperature(pooled, per_image)
    return {
        **calibration_block(samples, round(t, 4)),
        "temperature_fitted": round(pooled, 4),
        "temperature_weight": round(w, 4),
        "n_images": len(samples),
    }


def tempered(proba, temperature: float) -> np.ndarray:
    """``proba`` at ``temperature`` (``softmax(log p / T)``, exact for one network's softmax); the same
    array at ``T == 1``. The argmax never changes."""
    return proba if temperature == 1.0 else temper_probabilities(proba, temperature)


class ReliabilityScorer:
    """Per-image uncertainty columns and the pixel sample of an evaluation (see module).

    ``temperature``: the run's (``postprocess.yaml``), applied to the probabilities before they
    are scored; ``n_images``: how many images will be added (sets the pixels sampled per image).
    """

    def __init__(self, temperature: float, background: int | None, n_images: int) -> None:
        self.temperature = float(temperature)
        self.background = background
        self.per_image = pixels_per_image(n_images)
        self.rows: list[dict] = []
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []

    def score(self, raw, proba, target, valid=None) -> dict:
        """Columns of one image: ``uncertainty`` (the default score) and every score of
        ``IMAGE_SCORES`` by name, from ``proba`` (at the run's temperature); ``raw``: the same at
        temperature 1, sampled for the calibration errors."""
        scores = image_scores(proba, self.background)
        row = {"uncertainty": scores[DEFAULT_SCORE], **scores}
        self.samples.append(pixel_sample(raw, target, self.per_image, len(self.rows), valid))
        self.rows.append(row)
        return row

    def summary(self, dice: list[float]) -> dict:
        """``{"uncertainty": {...}, "calibration": {...}}`` for ``metrics.json``; ``dice``: the per-image
        Dice in the order the images were scored. ``uncertainty`` holds the default score's
        ``spearman``, ``aurc``, ``aurc_random``, ``aurc_oracle``, ``dice_kept`` and ``dice_all`` at top
        level and every score's under ``scores``."""
        out: dict = {"calibration": calibration_block(self.samples, self.temperature)}
        if not self.rows:
            return {**out, "uncertainty": {"score": DEFAULT_SCORE, "scores": {}}}
        ranking = uncertainty_ranking({name: [r[name] for r in self.rows] for name in IMAGE_SCORES}, list(dice))
        out["uncertainty"] = {
            "score": DEFAULT_SCORE,
            "temperature": self.temperature,
            **ranking[DEFAULT_SCORE],
            "scores": ranking,
        }
        return out


def format_reliability(metrics: dict) -> list[str]:
    """Text lines of the ``uncertainty`` and ``calibration`` blocks of ``metrics.json`` (for the CLI)."""
    lines = []
    u = metrics.get("uncertainty") or {}
    if "aurc" in u:
        kept = "  ".join(f"{p}% {d:.4f}" for p, d in u["dice_kept"].items())
        lines.append(
            f"uncertainty ({u['score']}): spearman with image Dice {_num(u['spearman'])}  aurc {u['aurc']:.4f} "
            f"(random {u['aurc_random']:.4f}, best {u['aurc_oracle']:.4f}); Dice kept when the most uncertain "
            f"go to review: {kept} (all {u['dice_all']:.4f})"
        )
    c = metrics.get("calibration") or {}
    if c.get("ece_before") is not None:
        lines.append(
            f"calibration: ECE {c['ece_before']:.4f} at temperature 1, {c['ece_after']:.4f} at the run's "
            f"temperature {c['temperature']:.3g} ({c['n_pixels']} pixels)"
        )
    return lines


def _num(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:+.3f}"


def calibrate_cv(cv, quiet: bool = True) -> dict:
    """Fit the temperature on the out-of-fold predictions of the CV folder ``cv`` (as stored, with
    the TTA they were made with) and store it in ``CV/postprocess.yaml`` (created when absent, other
    steps kept). Returns :func:`fit_calibration`'s block (also ``summary.json`` ``calibration``)."""
    from biomedseg.io import Palette, read_mask
    from biomedseg.postprocess.ops import PostprocessConfig, load_postprocess, save_postprocess
    from biomedseg.workflows.oof import out_of_fold

    info = cv.fold(0).dataset()
    palette = Palette.from_json(info.palette)
    tta = cv.fold_record(0).get("tta", "none")
    n = pixels_per_image(len(cv.folds()["pool"]))
    samples = []
    for i, (s, proba, _) in enumerate(out_of_fold(cv, tta, quiet=quiet)):
        target, _ = read_mask(s.mask, palette, strict_index=info.strict_index)
        samples.append(pixel_sample(proba, target, n, i))
    block = fit_calibration(samples)
    cfg = load_postprocess(cv.root) or PostprocessConfig()
    save_postprocess(cfg.model_copy(update={"temperature": block["temperature"]}), cv.root)
    log.info(
        "%s: temperature %.3g fitted on %d out-of-fold images (ECE %.4f -> %.4f)",
        cv.root,
        block["temperature"],
        len(samples),
        block["ece_before"] if block["ece_before"] is not None else float("nan"),
        block["ece_after"] if block["ece_after"] is not None else float("nan"),
    )
    return block
