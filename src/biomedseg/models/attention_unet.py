"""Attention U-Net (Oktay et al. 2018): skips re-weighted by additive attention gates.

The gate is MONAI's ``AttentionBlock`` (gating signal = the upsampled decoder feature at the
skip's resolution, as in MONAI's ``AttentionUnet``); the U-Net around it is ours so that the
family shares deep supervision, the classifier head and the width options.
"""

from __future__ import annotations

from torch import nn

from biomedseg.models.blocks import DoubleConv
from biomedseg.models.unet.family import register_unet2d


def _gate(gating_channels: int, skip_channels: int) -> nn.Module:
    from monai.networks.nets.attentionunet import AttentionBlock

    return AttentionBlock(spatial_dims=2, f_int=max(1, skip_channels // 2), f_g=gating_channels, f_l=skip_channels)


build_attention_unet = register_unet2d(
    "attention-unet",
    DoubleConv,
    gate=_gate,
    description="attention U-Net (Oktay 2018): MONAI attention gates on the skip connections",
    doc="Double-conv U-Net whose skip features are multiplied by a sigmoid attention map.",
)
