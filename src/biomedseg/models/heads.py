"""Optional image-level classifier head on the bottleneck of a segmentation network.

``create_model(name, ..., classifier_head=True)`` wraps the network in :class:`WithClassifier`:

- ``forward(x)`` returns the segmentation logits exactly as before (one encoder pass) and keeps
  the image-level logits of that same pass in ``.class_logits`` ``(N,)``;
- ``classify(x) -> (N,) logits`` runs the encoder only (any input size: global pooling).

The logit is "this image contains foreground" (train it with ``BCEWithLogitsLoss`` against
``(mask != background).any()`` per image). A typical training step::

    seg = model(x)                          # (N, K, H, W) or deep-supervision list
    cls = classifier_of(model).class_logits # (N,), same forward pass
    loss = seg_loss(seg, y) + 0.1 * F.binary_cross_entropy_with_logits(cls, has_fg.float())

and at inference ``classify(model, x)`` (or ``classifier_of(model).classify(x)``) e.g. to drop
predicted masks of images classified as empty. :func:`classifier_of` unwraps the registry's
``PadToMultiple`` and ``DistributedDataParallel`` wrappers.
"""

from __future__ import annotations

import torch
from torch import nn

from biomedseg.models.blocks import EncoderDecoder


class ClassifierHead(nn.Module):
    """Global average + max pooling of the bottleneck, dropout, linear -> ``(N,)`` logits."""

    def __init__(self, in_channels: int, dropout: float = 0.2):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * in_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.fc(self.dropout(pooled)).squeeze(1)


class WithClassifier(nn.Module):
    """Segmentation network + :class:`ClassifierHead` on its bottleneck (see module docstring)."""

    def __init__(self, net: EncoderDecoder, dropout: float = 0.2):
        super().__init__()
        if not isinstance(net, EncoderDecoder):
            raise TypeError(f"{type(net).__name__} has no encode/decode split; classifier_head is not supported")
        self.net = net
        self.head = ClassifierHead(net.bottleneck_channels, dropout)
        self.class_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor):
        bottleneck, context = self.net.encode(x)
        self.class_logits = self.head(bottleneck)
        return self.net.decode(bottleneck, context, x.shape[-2:])

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N,)`` image-level logits (encoder only)."""
        bottleneck, _ = self.net.encode(x)
        return self.head(bottleneck)


def maybe_with_classifier(net: EncoderDecoder, classifier_head: bool) -> nn.Module:
    """What the model factories return: ``net`` itself, or wrapped when ``classifier_head``."""
    return WithClassifier(net) if classifier_head else net


def classifier_of(model: nn.Module) -> WithClassifier:
    """The :class:`WithClassifier` inside ``model`` (through PadToMultiple / DDP wrappers)."""
    m = model
    for _ in range(4):
        if isinstance(m, WithClassifier):
            return m
        inner = getattr(m, "module", None)
        if inner is None:
            inner = getattr(m, "net", None)
        if not isinstance(inner, nn.Module):
            break
        m = inner
    raise ValueError("the model has no classifier head (create it with classifier_head=True)")


def classify(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Image-level logits ``(N,)`` of a model created with ``classifier_head=True``."""
    return classifier_of(model).classify(x)
