"""U-Nets with ResNet-34 / ResNet-50 encoders (He et al. 2016), optionally ImageNet-pretrained.

The encoders follow torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...; stride in the 3x3 conv of the bottleneck, "ResNet v1.5"), so
ImageNet files load by name. The decoder takes skips at 1/16, 1/8, 1/4 and 1/2 resolution and
upsamples once more to full resolution.
"""

from __future__ import annotations

from torch import nn

from biomedseg.models.blocks import DoubleConv, EncoderDecoder, StridedPointwiseConv, UNetDecoder
from biomedseg.models.heads import maybe_with_classifier
from biomedseg.models.registry import register


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    # = torchvision's Conv2d(1x1, stride) + BN (same keys downsample.0/1; see StridedPointwiseConv)
    return nn.Sequential(StridedPointwiseConv(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4) + identity (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes * 4, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """Stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool) and four stages of blocks.

    ``forward`` returns the 1/32 bottleneck and the skips ``[1/2, 1/4, 1/8, 1/16]``.
    """

    def __init__(self, block, layers: tuple[int, int, int, int], in_channels: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = width
        self.channels = [width]
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(c, planes, stride=2 if (i > 0 and j == 0) else 1))
                c = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.channels.append(c)

    def forward(self, x):
        x0 = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return x4, [x0, x1, x2, x3]


_RESNET_KEYS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


class ResNetUNet(EncoderDecoder):
    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        block,
        layers,
        width: int = 64,
        decoder_channels: tuple[int, ...] | None = None,
        deep_supervision: bool | int = False,
    ):
        super().__init__()
        self.encoder = ResNetEncoder(block, layers, in_channels, width)
        ch = self.encoder.channels  # [1/2, 1/4, 1/8, 1/16, 1/32]
        dec = decoder_channels or tuple(max(1, width * m // 4) for m in (16, 8, 4, 2, 1))
        if len(dec) != 5:
            raise ValueError("decoder_channels needs 5 values (1/16, 1/8, 1/4, 1/2, full resolution)")
        levels = [(ch[3], dec[0]), (ch[2], dec[1]), (ch[1], dec[2]), (ch[0], dec[3]), (0, dec[4])]
        self.decoder = UNetDecoder(ch[4], levels, n_classes, DoubleConv, deep_supervision=deep_supervision)
        self.bottleneck_channels = ch[4]

    def encode(self, x):
        bottleneck, skips = self.encoder(x)
        return bottleneck, skips[::-1] + [None]

    def decode(self, bottleneck, context, size):
        return self.decoder(bottleneck, context, size)


def _register_resnet_unet(name: str, arch: str, block, layers: tuple[int, ...], description: str, doc: str):
    """Register ``name``: a :class:`ResNetUNet` with encoder ``arch`` (``block`` x ``layers``);
    returns the factory (docstring ``doc``)."""

    def build(
        in_channels: int,
        n_classes: int,
        width: int = 64,
        pretrained: str | None = None,
        decoder_channels: list[int] | None = None,
        deep_supervision: bool | int = False,
        classifier_head: bool = False,
    ) -> nn.Module:
        net = ResNetUNet(
            in_channels,
            n_classes,
            block,
            layers,
            width,
            tuple(decoder_channels) if decoder_channels else None,
            deep_supervision,
        )
        if pretrained:
            from biomedseg.models.pretrained import load_encoder_weights

            load_encoder_weights(net.encoder, str(pretrained), arch, _RESNET_KEYS, "conv1.weight", in_channels)
        return maybe_with_classifier(net, classifier_head)

    build.__doc__ = doc
    build.__name__ = build.__qualname__ = "build_" + name.replace("-", "_")
    return register(name, multiple=32, description=description)(build)


_PRETRAINED_DOC = """

    ``pretrained``: ``"imagenet"`` or a torchvision-style ``.pth`` file (needs ``width=64``)."""

build_resnet34_unet = _register_resnet_unet(
    "resnet34-unet",
    "resnet34",
    BasicBlock,
    (3, 4, 6, 3),
    description="U-Net with a ResNet-34 encoder (basic blocks, optional ImageNet weights)",
    doc="ResNet-34 encoder (3, 4, 6, 3 basic blocks); decoder 256..16 channels (scaled by width/64)." + _PRETRAINED_DOC,
)

build_resnet50_unet = _register_resnet_unet(
    "resnet50-unet",
    "resnet50",
    Bottleneck,
    (3, 4, 6, 3),
    description="U-Net with a ResNet-50 encoder (bottleneck blocks, optional ImageNet weights)",
    doc="ResNet-50 encoder (3, 4, 6, 3 bottleneck blocks, 2048 channels at 1/32)." + _PRETRAINED_DOC,
)
