"""U-Net as in Ronneberger et al. 2015: double 3x3 convs, 2x2 max pooling, 2x2 up-convolutions."""

from __future__ import annotations

from torch import nn

from biomedseg.models.blocks import DoubleConv, UNet2d
from biomedseg.models.heads import maybe_with_classifier
from biomedseg.models.registry import register
from biomedseg.models.unet.family import unet_multiple


@register(
    "unet-classic",
    multiple=unet_multiple,
    description="classic U-Net (Ronneberger 2015): double conv+BN/ReLU, 64..1024 channels, 4 poolings",
)
def build_unet_classic(
    in_channels: int,
    n_classes: int,
    base_channels: int = 64,
    depth: int = 5,
    deep_supervision: bool | int = False,
    classifier_head: bool = False,
) -> nn.Module:
    """``depth`` resolution levels (4 poolings by default), channels ``base_channels * 2**i``
    (64..1024 by default), no residuals.

    Padding keeps sizes ('same' convs, unlike the paper's valid convs), batch norm after every conv.
    """
    net = UNet2d(
        in_channels, n_classes, DoubleConv, depth=depth, base_channels=base_channels, deep_supervision=deep_supervision
    )
    return maybe_with_classifier(net, classifier_head)
