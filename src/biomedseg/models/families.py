"""Imports every model family so that it registers itself."""

from biomedseg.models import attention_unet, inception_unet, resnet_unet, resunet, segnet, vgg_unet  # noqa: F401
from biomedseg.models.unet import classic, default  # noqa: F401
