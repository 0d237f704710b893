"""Imports every model family so that it registers itself."""

from biomedseg.models import unet  # noqa: F401
