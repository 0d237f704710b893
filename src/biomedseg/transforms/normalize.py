"""Intensity normalisation: per-channel z-score from training-set statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Normalizer:
    """z-score per channel: ``(x - mean[c]) / std[c]`` in the image's raw units.

    ``mean``, ``std``: lists of length C (floats), stored in the run's ``dataset.json``.
    """

    mean: list[float]
    std: list[float]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` any dtype -> ``(C, H, W) float32``."""
        x = np.moveaxis(np.asarray(image), -1, 0).astype(np.float32)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return (x - mean) / std

    def to_json(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_json(cls, d: dict) -> "Normalizer":
        return cls(mean=list(d["mean"]), std=list(d["std"]))

    @classmethod
    def fit(cls, images) -> "Normalizer":
        """Per-channel mean/std over all pixels of ``images`` (each ``(H, W, C)``), in float64."""
        total = None
        for img in images:
            x = np.asarray(img, np.float64).reshape(-1, img.shape[-1])
            s = np.stack([x.sum(0), (x * x).sum(0), np.full(x.shape[1], x.shape[0], np.float64)])
            total = s if total is None else total + s
        if total is None:
            raise ValueError("no images to compute normalisation statistics")
        mean = total[0] / total[2]
        var = np.maximum(total[1] / total[2] - mean**2, 0.0)
        std = np.maximum(np.sqrt(var), 1e-6)
        return cls(mean=mean.tolist(), std=std.tolist())
