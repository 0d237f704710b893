"""Imports every model family so that it registers itself."""

from biomedseg.models import (  # noqa: F401
    attention_unet,
    inception_unet,
    resnet_unet,
    resunet,
    segnet,
    unet,
    unet_classic,
    vgg_unet,
)
