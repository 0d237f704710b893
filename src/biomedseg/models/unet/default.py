"""U-Net (MONAI's implementation), the default architecture."""

from __future__ import annotations

from torch import nn

from biomedseg.models.registry import register
from biomedseg.models.unet.family import unet_multiple


@register("unet", multiple=unet_multiple, description="U-Net with residual units (MONAI), configurable depth/width")
def build_unet(
    in_channels: int,
    n_classes: int,
    depth: int = 5,
    base_channels: int = 32,
    max_channels: int = 512,
    num_res_units: int = 2,
    norm: str = "instance",
    dropout: float = 0.0,
    full_res_channels: int = 0,
    classifier_head: bool = False,
) -> nn.Module:
    """MONAI ``UNet``: ``depth`` resolution levels, channels doubling from ``base_channels``.

    ``norm``: ``instance`` | ``batch`` | ``group`` (MONAI norm names); ``num_res_units`` 0 gives
    plain double-conv blocks. ``classifier_head``: add an image-level "contains foreground"
    head on the bottleneck (:func:`biomedseg.models.heads.monai_unet_with_classifier`; the
    forward pass also sets ``.class_logits (N,)``).

    MONAI's first level already downsamples (stride 2), so its only full-resolution features are
    the ``n_classes`` output channels. ``full_res_channels`` > 0 adds a stride-1 level of that
    width in front (``depth`` + 1 levels in all, the same bottleneck resolution): full-resolution
    features for thin structures such as membranes and vessels (``docs/experiments.md`` §6).
    """
    from monai.networks.nets import UNet

    channels = tuple(min(base_channels * 2**i, max_channels) for i in range(depth))
    strides = (2,) * (depth - 1)
    if full_res_channels > 0:
        channels, strides = (int(full_res_channels),) + channels, (1,) + strides
    net = UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=n_classes,
        channels=channels,
        strides=strides,
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )
    if classifier_head:
        from biomedseg.models.heads import monai_unet_with_classifier

        return monai_unet_with_classifier(net)
    return net
