"""SegNet (Badrinarayanan, Kendall & Cipolla 2017): the decoder upsamples with the encoder's
max-pooling indices (``MaxUnpool2d``); no skip concatenations."""

from __future__ import annotations

import warnings

from torch import nn

from biomedseg.models.blocks import EncoderDecoder, conv_bn_relu
from biomedseg.models.heads import maybe_with_classifier
from biomedseg.models.registry import register

_CONVS_PER_STAGE = (2, 2, 3, 3, 3)  # VGG-16 layout of the paper's encoder


class SegNet(EncoderDecoder):
    """``stages`` encoder stages (conv+BN+ReLU blocks, then 2x2 max pooling that records its
    indices) mirrored by decoder stages (unpooling with those indices, then convs).

    ``encode(x)`` returns ``(bottleneck, (indices, sizes))``; ``decode`` consumes them, so the
    indices can be inspected or replaced between the two.
    """

    def __init__(self, in_channels: int, n_classes: int, stages: int = 4, base_channels: int = 64):
        super().__init__()
        if not 1 <= stages <= len(_CONVS_PER_STAGE):
            raise ValueError(f"stages must be 1..{len(_CONVS_PER_STAGE)}")
        widths = [min(base_channels * 2**i, base_channels * 8) for i in range(stages)]
        convs = _CONVS_PER_STAGE[:stages]
        self.encoder = nn.ModuleList()
        c = in_channels
        for w, n in zip(widths, convs):
            self.encoder.append(nn.Sequential(*[conv_bn_relu(c if j == 0 else w, w) for j in range(n)]))
            c = w
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.decoder = nn.ModuleList()  # decoder[i] mirrors encoder[i]; run deepest first
        for i, (w, n) in enumerate(zip(widths, convs)):
            out = widths[i - 1] if i > 0 else base_channels
            self.decoder.append(nn.Sequential(*[conv_bn_relu(w, w if j < n - 1 else out) for j in range(n)]))
        self.head = nn.Conv2d(base_channels, n_classes, kernel_size=3, padding=1)
        self.bottleneck_channels = widths[-1]

    def encode(self, x):
        indices, sizes = [], []
        for stage in self.encoder:
            x = stage(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        return x, (indices, sizes)

    def decode(self, bottleneck, context, size):
        indices, sizes = context
        x = bottleneck
        for i in range(len(self.decoder) - 1, -1, -1):
            with warnings.catch_warnings():
                # torch flags max_unpool2d as non-deterministic under use_deterministic_algorithms; with
                # non-overlapping 2x2 windows every output position is written at most once, so it is.
                warnings.filterwarnings("ignore", message=".*max_unpooling2d.*")
                x = self.unpool(x, indices[i], output_size=sizes[i])
            x = self.decoder[i](x)
        return self.head(x)


def _multiple(stages: int = 4, **_) -> int:
    return 2**stages


@register(
    "segnet",
    multiple=_multiple,
    description="SegNet (Badrinarayanan 2017): max-unpooling with encoder indices, no skips, 3-5 stages",
)
def build_segnet(
    in_channels: int, n_classes: int, stages: int = 4, base_channels: int = 64, classifier_head: bool = False
) -> nn.Module:
    """VGG-style encoder (2, 2, 3, 3 convs per stage), batch norm, mirrored decoder."""
    return maybe_with_classifier(SegNet(in_channels, n_classes, stages, base_channels), classifier_head)
