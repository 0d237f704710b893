"""Inception U-Net: every conv block of the U-Net is an inception block (Szegedy et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from biomedseg.models.blocks import conv_bn_relu
from biomedseg.models.unet.family import register_unet2d


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated to ``cout`` channels (each about ``cout / 4``):
    1x1 conv; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3 (a 5x5 receptive field); 3x3 max pool -> 1x1.
    Every conv is followed by batch norm and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        if cout < 4:
            raise ValueError("an inception block needs at least 4 output channels")
        b = cout // 4
        self.branch1 = conv_bn_relu(cin, cout - 3 * b, 1)
        self.branch3 = nn.Sequential(conv_bn_relu(cin, b, 1), conv_bn_relu(b, b, 3))
        self.branch5 = nn.Sequential(conv_bn_relu(cin, b, 1), conv_bn_relu(b, b, 3), conv_bn_relu(b, b, 3))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(cin, b, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


build_inception_unet = register_unet2d(
    "inception-unet",
    InceptionBlock,
    description="U-Net with inception blocks (parallel 1x1 / 3x3 / double-3x3 / pool branches)",
    doc="U-Net (max pooling, transposed-conv upsampling) with one inception block per level.",
)
