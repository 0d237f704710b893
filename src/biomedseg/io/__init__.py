"""Reading and writing images, masks and result files (imports only ``biomedseg.core.errors``)."""

from biomedseg.io.images import (
    IMAGE_EXTENSIONS,
    conform_channels,
    image_shape,
    is_grey_rgb,
    is_image_file,
    is_image_path,
    read_image,
    read_raw,
)
from biomedseg.io.masks import Palette, discover_palette, palette_for_classes, read_mask
from biomedseg.io.writers import atomic_path, write_json, write_png, write_text, write_tiff

__all__ = [
    "IMAGE_EXTENSIONS",
    "Palette",
    "atomic_path",
    "conform_channels",
    "discover_palette",
    "image_shape",
    "is_grey_rgb",
    "is_image_file",
    "is_image_path",
    "palette_for_classes",
    "read_image",
    "read_mask",
    "read_raw",
    "write_json",
    "write_png",
    "write_text",
    "write_tiff",
]
