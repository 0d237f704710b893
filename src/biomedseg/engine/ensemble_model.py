"""The network of an ensemble: members behind their own input normalisation, run tile by tile.

Both sliding-window predictors (:mod:`~biomedseg.engine.sliding_window`,
:mod:`~biomedseg.engine.band_accumulator`) Gaussian-blend **logits** over overlapping tiles and
take the softmax afterwards. A member's probabilities are therefore ``softmax(blend(logits))``,
and averaging softmaxes per tile (then blending) would not give the mean of the members'
probabilities where tiles overlap. So :class:`EnsembleModel` returns the members' logits stacked
along the channel axis (``M x K`` channels; each member's TTA average is taken per tile as for a
single run), the predictor blends every channel as it blends a single run's, and
:meth:`EnsembleModel.blended_to_proba` turns the blended ``(M*K, ...)`` logits into the weighted
mean of the members' softmax. The result equals the weighted mean of the members' own
probabilities (to float rounding), in memory and streamed.

Cost: one tile is run through each member in turn (network memory: one member's); the blending
buffers hold ``M x K`` channels instead of ``K`` (in memory: ``M x K x H x W`` float32; streamed:
``M x K`` channels of one band, still independent of the image height).

The ensemble takes the **raw** tile (``(N, C, h, w) float32`` in the data's units, channels
already conformed): each member applies its own per-channel clip and z-score
(:class:`~biomedseg.transforms.normalize.Normalizer`) before its network, exactly as it does alone.
"""

from __future__ import annotations

import torch
from torch import nn

from biomedseg.transforms.normalize import Normalizer


class EnsembleModel(nn.Module):
    """``(N, C, h, w)`` raw tiles -> ``(N, M*K, h, w)`` member logits (member ``m``: channels
    ``m*K .. m*K+K-1``).

    Args:
        models: the members' networks (each ``(N, C, h, w)`` normalised -> ``(N, K, h, w)`` logits).
        normalizers: each member's input normalisation.
        weights: one per member (normalised to sum to 1).
        n_classes: ``K``.
    """

    def __init__(self, models, normalizers: list[Normalizer], weights: list[float], n_classes: int):
        super().__init__()
        if not (len(models) == len(normalizers) == len(weights)) or not models:
            raise ValueError("one normaliser and one weight per member, at least one member")
        total = float(sum(weights))
        self.members = nn.ModuleList(models)
        self.n_classes = int(n_classes)
        self.weights = [float(w) / total for w in weights]
        self.clipped = [n.low is not None for n in normalizers]
        for i, n in enumerate(normalizers):
            for name, values in (("mean", n.mean), ("std", n.std), ("low", n.low), ("high", n.high)):
                if values is not None:
                    self.register_buffer(f"{name}_{i}", torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``i``'s normalisation of raw ``x``: ``(clip(x, low, high) - mean) / std``."""
        if self.clipped[i]:
            x = torch.clamp(x, getattr(self, f"low_{i}"), getattr(self, f"high_{i}"))
        return (x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(self.normalize(i, x)).float() for i, net in enumerate(self.members)], dim=1)

    def blended_to_proba(self, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Blended stacked logits ``(M*K, ...)`` -> ``(K, ...)``: the weighted mean over the members
        of the softmax over each member's ``K`` channels (``softmax(logits / temperature)``)."""
        m, k = len(self.members), self.n_classes
        p = torch.softmax(y.float().reshape(m, k, *y.shape[1:]) / float(temperature), dim=1)
        w = torch.tensor(self.weights, dtype=p.dtype, device=p.device).reshape(m, *([1] * (p.dim() - 1)))
        return (p * w).sum(0)
