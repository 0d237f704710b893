"""Imports every model family so that it registers itself."""

from biomedseg.models import (  # noqa: F401
    attention_unet,
    inception_unet,
    resnet_unet,
    resunet,
    segnet,
    vgg_unet,
)
from biomedseg.models.unet import classic, default  # noqa: F401
