"""Residual U-Net (Zhang, Liu & Wang 2018): pre-activation residual units, strided downsampling."""

from __future__ import annotations

from torch import nn

from biomedseg.models.blocks import StridedPointwiseConv
from biomedseg.models.unet.family import register_unet2d


class ResidualUnit(nn.Module):
    """``x + F(x)`` with ``F = BN-ReLU-Conv3x3(stride) -> BN-ReLU-Conv3x3``; the shortcut is a
    strided 1x1 conv + BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=False),
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(StridedPointwiseConv(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def _down(cin: int, cout: int) -> nn.Module:
    return ResidualUnit(cin, cout, stride=2)


build_resunet = register_unet2d(
    "resunet",
    ResidualUnit,
    down=_down,
    description="residual U-Net (Zhang 2018): pre-activation residual units, strided downsampling",
    doc="Every encoder/decoder block is a residual unit; downsampling by stride-2 residual units.",
)
