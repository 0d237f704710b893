"""Registration of the :class:`~biomedseg.models.blocks.UNet2d` family: one U-Net with a
different conv block (and optionally its own downsampling or skip gate) per architecture."""

from __future__ import annotations

from torch import nn

from biomedseg.models.blocks import Block, UNet2d
from biomedseg.models.heads import maybe_with_classifier
from biomedseg.models.registry import register


def unet_multiple(depth: int = 5, **_) -> int:
    """Input-size multiple of a U-Net with ``depth`` resolution levels (``depth - 1`` halvings)."""
    return 2 ** (depth - 1)


def register_unet2d(name: str, block: Block, description: str, doc: str, **unet_kwargs):
    """Register ``name`` as a :class:`UNet2d` of conv block ``block`` (``unet_kwargs``: its
    ``down`` or ``gate``) with the family's options, and return the factory (docstring ``doc``)."""

    def build(
        in_channels: int,
        n_classes: int,
        base_channels: int = 32,
        depth: int = 5,
        max_channels: int = 512,
        deep_supervision: bool | int = False,
        classifier_head: bool = False,
    ) -> nn.Module:
        net = UNet2d(
            in_channels,
            n_classes,
            block,
            depth=depth,
            base_channels=base_channels,
            max_channels=max_channels,
            deep_supervision=deep_supervision,
            **unet_kwargs,
        )
        return maybe_with_classifier(net, classifier_head)

    build.__doc__ = doc
    build.__name__ = build.__qualname__ = "build_" + name.replace("-", "_")
    return register(name, multiple=unet_multiple, description=description)(build)
