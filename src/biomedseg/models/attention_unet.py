"""Attention U-Net (Oktay et al. 2018): skips re-weighted by additive attention gates.

The gate is MONAI's ``AttentionBlock`` (gating signal = the upsampled decoder feature at the
skip's resolution, as in MONAI's ``AttentionUnet``); the U-Net around it is ours so that the
family shares deep supervision, the classifier head and the width options.
"""

from __future__ import annotations

from torch import nn

from biomedseg.models.blocks import DoubleConv, UNet2d
from biomedseg.models.heads import maybe_with_classifier
from biomedseg.models.registry import register


def _gate(gating_channels: int, skip_channels: int) -> nn.Module:
    from monai.networks.nets.attentionunet import AttentionBlock

    return AttentionBlock(spatial_dims=2, f_int=max(1, skip_channels // 2), f_g=gating_channels, f_l=skip_channels)


def _multiple(depth: int = 5, **_) -> int:
    return 2 ** (depth - 1)


@register("attention-unet", multiple=_multiple,
          description="attention U-Net (Oktay 2018): MONAI attention gates on the skip connections")
def build_attention_unet(in_channels: int, n_classes: int, base_channels: int = 32, depth: int = 5,
                         max_channels: int = 512, deep_supervision: bool | int = False,
                         classifier_head: bool = False) -> nn.Module:
    """Double-conv U-Net whose skip features are multiplied by a sigmoid attention map."""
    net = UNet2d(in_channels, n_classes, DoubleConv, depth=depth, base_channels=base_channels,
                 max_channels=max_channels, gate=_gate, deep_supervision=deep_supervision)
    return maybe_with_classifier(net, classifier_head)
