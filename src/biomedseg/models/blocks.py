"""Building blocks shared by the U-Net family.

Every network written in this package is an :class:`EncoderDecoder`: ``encode(x)`` returns the
bottleneck tensor and a context (the skip features, or SegNet's pooling indices), ``decode``
turns them into logits. Splitting the two lets :mod:`biomedseg.models.heads` attach an
image-level classifier to the bottleneck without running the network twice.

:class:`UNetDecoder` is the decoder of every U-Net variant here: per level a 2x2 transposed
convolution, concatenation with the (optionally attention-gated) skip, and a conv block. With
deep supervision it also returns auxiliary logits from the coarser decoder levels, upsampled to
the input size, as ``[full_res, half_res, quarter_res, ...]`` in training mode.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Block = Callable[[int, int], nn.Module]


def conv_bn_relu(cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """``Conv2d (no bias) -> BatchNorm2d -> ReLU``, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class StridedPointwiseConv(nn.Conv2d):
    """1x1 convolution with stride ``s``, computed as ``x[..., ::s, ::s]`` followed by a stride-1
    1x1 convolution: the same weights (``weight``, ``bias``) and the same result.

    Used for the downsampling shortcuts of residual blocks: PyTorch 2.13's CPU backward of a
    *strided* 1x1 convolution on ``channels_last`` tensors corrupts memory (crash), this form
    does not.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, bias: bool = False):
        super().__init__(cin, cout, kernel_size=1, bias=bias)
        self.subsample = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subsample > 1:
            x = x[..., :: self.subsample, :: self.subsample]
        return super().forward(x)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions with batch norm and ReLU (the block of Ronneberger et al. 2015)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


def n_heads(deep_supervision: bool | int) -> int:
    """``False``/0 -> 1 output; ``True`` -> 3 (full, 1/2, 1/4 resolution); an int n -> n outputs."""
    if deep_supervision is True:
        return 3
    if not deep_supervision:
        return 1
    n = int(deep_supervision)
    if n < 1:
        raise ValueError("deep_supervision must be a bool or a number of heads >= 1")
    return n


def _match(x: torch.Tensor, ref_size: Sequence[int]) -> torch.Tensor:
    """Crop or zero-pad ``x`` on the bottom/right to ``ref_size`` (only needed for odd sizes)."""
    h, w = x.shape[-2:]
    th, tw = int(ref_size[0]), int(ref_size[1])
    if (h, w) == (th, tw):
        return x
    x = x[..., :th, :tw]
    return F.pad(x, (0, tw - x.shape[-1], 0, th - x.shape[-2]))


class EncoderDecoder(nn.Module):
    """Base class: ``forward(x) = decode(*encode(x), size=x.shape[-2:])``.

    Subclasses set ``bottleneck_channels`` and implement ``encode(x) -> (bottleneck, context)``
    and ``decode(bottleneck, context, size) -> logits`` (or a list of logits with deep
    supervision in training mode).
    """

    bottleneck_channels: int = 0

    def encode(self, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, bottleneck: torch.Tensor, context, size):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        bottleneck, context = self.encode(x)
        return self.decode(bottleneck, context, x.shape[-2:])


class UNetDecoder(nn.Module):
    """U-Net decoder with optional attention gates and deep supervision.

    Args:
        in_channels: channels of the bottleneck.
        levels: ``(skip_channels, out_channels)`` per level, deepest first; ``skip_channels`` 0
            means that level has no skip (e.g. the full-resolution level of a ResNet encoder).
        n_classes: output channels (logits).
        block: ``block(cin, cout)`` conv block applied after the concatenation.
        gate: optional ``gate(gating_channels, skip_channels) -> module(g, skip)`` returning the
            re-weighted skip (attention U-Net).
        deep_supervision: see :func:`n_heads`.
    """

    def __init__(
        self,
        in_channels: int,
        levels: Sequence[tuple[int, int]],
        n_classes: int,
        block: Block,
        gate: Callable[[int, int], nn.Module] | None = None,
        deep_supervision: bool | int = False,
    ):
        super().__init__()
        self.ups, self.gates, self.blocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.has_skip: list[bool] = []
        c = in_channels
        for skip, out in levels:
            self.ups.append(nn.ConvTranspose2d(c, out, kernel_size=2, stride=2))
            self.gates.append(gate(out, skip) if (gate is not None and skip) else nn.Identity())
            self.blocks.append(block(out + skip, out))
            self.has_skip.append(bool(skip))
            c = out
        self.gated = gate is not None
        self.head = nn.Conv2d(c, n_classes, kernel_size=1)
        n_aux = min(n_heads(deep_supervision), len(levels)) - 1
        # auxiliary heads on the outputs of the 2nd-last, 3rd-last, ... decoder levels
        self.aux_heads = nn.ModuleList(nn.Conv2d(levels[-2 - i][1], n_classes, kernel_size=1) for i in range(n_aux))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor | None], size):
        """``skips`` aligned with ``levels`` (deepest first, ``None`` where a level has none)."""
        outs = []
        for up, gate, block, has_skip, skip in zip(self.ups, self.gates, self.blocks, self.has_skip, skips):
            x = up(x)
            if has_skip:
                x = _match(x, skip.shape[-2:])
                s = gate(x, skip) if self.gated else skip
                x = torch.cat([x, s], dim=1)
            x = block(x)
            outs.append(x)
        logits = _match(self.head(x), size)
        if not (self.training and len(self.aux_heads)):
            return logits
        heads = [logits]
        for i, head in enumerate(self.aux_heads):
            heads.append(F.interpolate(head(outs[-2 - i]), size=tuple(size), mode="bilinear", align_corners=False))
        return heads


class UNet2d(EncoderDecoder):
    """Generic U-Net: ``depth`` resolution levels (``depth - 1`` downsamplings, the convention of
    the ``unet`` entry), channels doubling from ``base_channels`` (capped at ``max_channels``).

    Args:
        block: conv block ``block(cin, cout)`` of every encoder and decoder level.
        down: ``"pool"`` (2x2 max pooling before the block) or a callable
            ``down(cin, cout) -> module`` that downsamples by 2 itself (e.g. a strided residual unit).
        gate: attention gate for the skips (see :class:`UNetDecoder`).
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        block: Block,
        depth: int = 5,
        base_channels: int = 64,
        max_channels: int | None = None,
        down: str | Callable[[int, int], nn.Module] = "pool",
        gate=None,
        deep_supervision: bool | int = False,
    ):
        super().__init__()
        if depth < 2:
            raise ValueError("depth (resolution levels) must be >= 2")
        chans = [base_channels * 2**i for i in range(depth)]
        if max_channels:
            chans = [min(c, max_channels) for c in chans]
        self.channels = chans
        self.stem = block(in_channels, chans[0])
        self.down = nn.ModuleList()
        for i in range(1, depth):
            if down == "pool":
                self.down.append(nn.Sequential(nn.MaxPool2d(2), block(chans[i - 1], chans[i])))
            else:
                self.down.append(down(chans[i - 1], chans[i]))
        self.bottleneck_channels = chans[-1]
        levels = [(chans[i], chans[i]) for i in range(depth - 2, -1, -1)]
        self.decoder = UNetDecoder(chans[-1], levels, n_classes, block, gate=gate, deep_supervision=deep_supervision)

    def encode(self, x):
        skips = [self.stem(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        return skips[-1], skips[:-1][::-1]

    def decode(self, bottleneck, context, size):
        return self.decoder(bottleneck, context, size)
