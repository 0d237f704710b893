"""U-Net with a VGG-16 encoder (Simonyan & Zisserman 2015), optionally ImageNet-pretrained."""

from __future__ import annotations

from torch import nn

from biomedseg.models.blocks import DoubleConv, EncoderDecoder, UNetDecoder
from biomedseg.models.heads import maybe_with_classifier
from biomedseg.models.registry import register

#: VGG-16 ("configuration D"): conv widths, "M" = 2x2 max pooling. The fifth pooling is left
#: out: the last block's output (1/16 resolution) is the bottleneck.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG16Encoder(nn.Module):
    """``features`` laid out exactly like torchvision's ``vgg16`` / ``vgg16_bn`` (same indices,
    so ImageNet files load by name); returns the bottleneck and the 4 skips (before each pool)."""

    def __init__(self, in_channels: int, width: int = 64, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        self.channels: list[int] = []
        c = in_channels
        for v in VGG16_LAYOUT:
            if v == "M":
                self.taps.append(len(layers) - 1)
                self.channels.append(c)
                layers.append(nn.MaxPool2d(2, stride=2))
                continue
            out = v * width // 64
            layers.append(nn.Conv2d(c, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            c = out
        self.features = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x):
        skips = []
        taps = set(self.taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                skips.append(x)
        return x, skips


class VGG16UNet(EncoderDecoder):
    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width: int = 64,
        batch_norm: bool = False,
        deep_supervision: bool | int = False,
    ):
        super().__init__()
        self.encoder = VGG16Encoder(in_channels, width, batch_norm)
        skips = self.encoder.channels  # full, 1/2, 1/4, 1/8
        levels = [(s, s) for s in reversed(skips)]
        self.decoder = UNetDecoder(
            self.encoder.out_channels, levels, n_classes, DoubleConv, deep_supervision=deep_supervision
        )
        self.bottleneck_channels = self.encoder.out_channels

    def encode(self, x):
        bottleneck, skips = self.encoder(x)
        return bottleneck, skips[::-1]

    def decode(self, bottleneck, context, size):
        return self.decoder(bottleneck, context, size)


@register(
    "vgg16-unet", multiple=16, description="U-Net with a VGG-16 encoder (batch_norm option, optional ImageNet weights)"
)
def build_vgg16_unet(
    in_channels: int,
    n_classes: int,
    batch_norm: bool = False,
    width: int = 64,
    pretrained: str | None = None,
    deep_supervision: bool | int = False,
    classifier_head: bool = False,
) -> nn.Module:
    """``pretrained``: ``"imagenet"`` (torchvision ``vgg16`` / ``vgg16_bn``, downloaded once) or a
    path to a torchvision-style ``.pth`` state dict (needs ``width=64``)."""
    net = VGG16UNet(in_channels, n_classes, width, batch_norm, deep_supervision)
    if pretrained:
        from biomedseg.models.pretrained import load_encoder_weights

        load_encoder_weights(
            net.encoder,
            str(pretrained),
            "vgg16_bn" if batch_norm else "vgg16",
            ("features.",),
            "features.0.weight",
            in_channels,
        )
    return maybe_with_classifier(net, classifier_head)
