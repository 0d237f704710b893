"""Intensity normalisation: per-channel z-score from training-set statistics, optionally after
clipping each channel at percentiles of the training pixels (for 16-bit and float data, where a
few hot pixels or saturated spots would otherwise set the scale)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: percentiles each channel is clipped at before the z-score (``clip_zscore``)
CLIP_PERCENTILES = (0.5, 99.5)
#: pixels drawn per image (with a fixed seed) to estimate the clipping percentiles
PERCENTILE_SAMPLES_PER_IMAGE = 65536
#: normalisation modes: ``auto`` resolves per dataset with :func:`normalization_for`
NORMALIZATIONS = ("auto", "zscore", "clip_zscore")


def normalization_for(images) -> str:
    """``"clip_zscore"`` when any image is deeper than 8 bits (uint16, float), else ``"zscore"``."""
    return "clip_zscore" if any(np.asarray(img).dtype != np.uint8 for img in images) else "zscore"


@dataclass
class Normalizer:
    """z-score per channel: ``(clip(x, low[c], high[c]) - mean[c]) / std[c]`` in raw units.

    ``mean``, ``std``: lists of length C (floats); ``low``, ``high``: per-channel clipping bounds,
    ``None`` for no clipping. Stored in the run's ``dataset.json``.
    """

    mean: list[float]
    std: list[float]
    low: list[float] | None = None
    high: list[float] | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` any dtype -> ``(C, H, W) float32``: per channel one pass from the raw
        values into the output (the same float32 arithmetic as clipping, subtracting and dividing
        a float copy; 5x faster on RGB patches, which it no longer transposes first)."""
        x = np.asarray(image)
        out = np.empty((x.shape[-1],) + x.shape[:-1], np.float32)
        for c in range(x.shape[-1]):
            if self.low is not None:
                np.clip(x[..., c], np.float32(self.low[c]), np.float32(self.high[c]), out=out[c])
                np.subtract(out[c], np.float32(self.mean[c]), out=out[c])
            else:
                np.subtract(x[..., c], np.float32(self.mean[c]), out=out[c], dtype=np.float32)
            np.divide(out[c], np.float32(self.std[c]), out=out[c])
        return out

    def to_json(self) -> dict:
        out = {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}
        if self.low is not None:
            out["clip"] = {"low": [float(v) for v in self.low], "high": [float(v) for v in self.high]}
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Normalizer":
        clip = d.get("clip")  # absent in runs written before clipping existed
        return cls(
            mean=list(d["mean"]),
            std=list(d["std"]),
            low=list(clip["low"]) if clip else None,
            high=list(clip["high"]) if clip else None,
        )

    @classmethod
    def fit(cls, images, mode: str = "zscore", seed: int = 0) -> "Normalizer":
        """Statistics of ``images`` (each ``(H, W, C)``), in float64.

        ``mode="zscore"``: per-channel mean/std over all pixels. ``"clip_zscore"``: first the
        :data:`CLIP_PERCENTILES` of each channel, estimated from up to
        :data:`PERCENTILE_SAMPLES_PER_IMAGE` pixels per image (seeded), then mean/std of the
        clipped pixels. ``"auto"``: :func:`normalization_for` the images.
        """
        images = list(images)
        if not images:
            raise ValueError("no images to compute normalisation statistics")
        if mode == "auto":
            mode = normalization_for(images)
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalization {mode!r}: choose one of {', '.join(NORMALIZATIONS)}")
        low = high = None
        if mode == "clip_zscore":
            rng = np.random.default_rng(seed)
            picked = []
            for img in images:
                flat = np.asarray(img).reshape(-1, img.shape[-1])
                if len(flat) > PERCENTILE_SAMPLES_PER_IMAGE:
                    flat = flat[rng.integers(0, len(flat), PERCENTILE_SAMPLES_PER_IMAGE)]
                picked.append(flat.astype(np.float64))
            low, high = np.percentile(np.concatenate(picked), CLIP_PERCENTILES, axis=0)
        total = None
        for img in images:
            x = np.asarray(img, np.float64).reshape(-1, img.shape[-1])
            if low is not None:
                x = np.clip(x, low, high)
            s = np.stack([x.sum(0), (x * x).sum(0), np.full(x.shape[1], x.shape[0], np.float64)])
            total = s if total is None else total + s
        mean = total[0] / total[2]
        var = np.maximum(total[1] / total[2] - mean**2, 0.0)
        std = np.maximum(np.sqrt(var), 1e-6)
        return cls(
            mean=mean.tolist(),
            std=std.tolist(),
            low=None if low is None else low.tolist(),
            high=None if high is None else high.tolist(),
        )
