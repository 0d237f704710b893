"""In-memory sliding-window inference with Gaussian-blended overlapping tiles.

:class:`SlidingWindowPredictor` wraps MONAI's ``SlidingWindowInferer`` (Gaussian importance
weighting, so tile borders leave no seams) with the run's precision policy, channels-last memory
format and optional flip test-time augmentation. Images smaller than a tile are handled by the
inferer's padding and cropped back.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def autocast_context(device: torch.device, precision: str):
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``, a no-op for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


_FLIPS = [(), (3,), (2,), (2, 3)]


class SlidingWindowPredictor:
    """Predict class probabilities of whole images with a trained model.

    Args:
        model: maps ``(N, C, h, w) float32`` to ``(N, K, h, w)`` logits.
        patch_size: tile side in pixels.
        overlap: fraction of a tile shared with its neighbour (0 <= overlap < 1).
        batch_size: tiles per forward pass.
        device: where the model runs.
        precision: ``fp32`` | ``bf16`` | ``fp16``.
        tta: average over the 4 flips (identity, horizontal, vertical, both).
    """

    def __init__(self, model, patch_size: int, overlap: float = 0.25, batch_size: int = 4,
                 device: str | torch.device = "cpu", precision: str = "fp32", tta: bool = False,
                 channels_last: bool = True):
        from monai.inferers import SlidingWindowInferer

        self.model = model
        self.device = torch.device(device)
        self.precision = precision
        self.tta = tta
        self.channels_last = channels_last
        self.patch_size = int(patch_size)
        self.inferer = SlidingWindowInferer(
            roi_size=(self.patch_size, self.patch_size),
            sw_batch_size=batch_size,
            overlap=overlap,
            mode="gaussian",
            padding_mode="reflect",
            sw_device=self.device,
            device=torch.device("cpu"),
            progress=False,
        )

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.precision):
            return self.model(x).float()

    @torch.inference_mode()
    def predict_logits(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(C, H, W) float32`` normalised image -> ``(K, H, W) float32`` blended logits (CPU)."""
        x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None]
        self.model.eval()
        flips = _FLIPS if self.tta else _FLIPS[:1]
        total = None
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            yi = self.inferer(xi, self._net)
            yi = torch.flip(yi, dims) if dims else yi
            total = yi if total is None else total + yi
        return (total / len(flips))[0]

    def predict_proba(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(C, H, W) float32`` normalised image -> ``(K, H, W) float32`` softmax probabilities."""
        return torch.softmax(self.predict_logits(image), dim=0).numpy()
