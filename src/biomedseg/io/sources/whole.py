"""PNG, JPEG, BMP (and other formats Pillow reads): images decoded whole, up to the decode cap.

The size comes from the header (nothing decoded) when the source is opened; the first window
decodes the image once (kept for the next windows). An image above ``max_decode_pixels`` is
refused before anything is decoded, with one ``UserError`` line that says to convert it to a
tiled TIFF: a "decompression bomb" (a tiny file declaring a huge size) costs nothing.

Pillow's own bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is a process-wide setting and is never
changed: PNG, JPEG and BMP are opened with their Pillow plugin directly (no limit of Pillow's, ours
applies), other formats with ``Image.open`` under the user's limit (then ours). 16-bit colour
PNGs (which Pillow truncates to 8 bit) are decoded by imagecodecs.
"""

from __future__ import annotations

import struct

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.sources.base import CONVERT_HINT, ImageSource, fail, reason_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_RGB_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"}


def whole_kind(head: bytes) -> str:
    """``"png16"`` (16-bit colour PNG), ``"png"``, ``"jpeg"``, ``"bmp"`` or ``"image"`` from the first bytes."""
    if head[:8] == PNG_MAGIC:
        # colour type 2 RGB, 4 LA, 6 RGBA at 16 bit: Pillow would truncate to 8 bit
        return "png16" if len(head) >= 26 and head[24] == 16 and head[25] in (2, 4, 6) else "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:2] == b"BM":
        return "bmp"
    return "image"


def _pillow_open(fh, kind: str):
    """Open the header with Pillow; PNG/JPEG/BMP by their plugin (no process-wide limit involved)."""
    from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin

    factory = {
        "png": PngImagePlugin.PngImageFile,
        "jpeg": JpegImagePlugin.jpeg_factory,
        "bmp": BmpImagePlugin.BmpImageFile,
    }.get(kind)
    return Image.open(fh) if factory is None else factory(fh)


class WholeSource(ImageSource):
    """An image decoded whole on the first read (see the module docstring)."""

    def __init__(self, path, level: int, raw: bool, max_decode_pixels: int, head: bytes, fh) -> None:
        """``head``: the file's first bytes; ``fh``: the file opened for reading (closed with the source)."""
        super().__init__(path, level, raw, max_decode_pixels)
        self._fh = fh
        self.kind = whole_kind(head)
        self._im = None
        self._decoded = None
        if self.kind == "png16":
            w, h = struct.unpack(">II", head[16:24])
            self.stored_channels, self.dtype = (1 if head[25] == 4 else 3), np.dtype(np.uint16)
        else:
            try:
                self._im = _pillow_open(fh, self.kind)
                w, h = self._im.size
                bands = self._im.getbands()
            except Exception as exc:  # noqa: BLE001 - any parser failure is a problem with the user's file
                self.close()
                raise fail(self.path, reason_of(exc)) from None
            self.stored_channels = 3 if len(bands) >= 3 or self._im.mode in ("P", "PA") and not raw else 1
            self.dtype = np.dtype(np.uint16 if self._im.mode.startswith("I;16") else np.uint8)
        self.level_shapes = [(int(h), int(w))]
        if self.level != 0:
            self.close()
            raise UserError(
                f"{self.path}: has no level {self.level} (only TIFF and zarr images hold resolution levels)"
            )

    def _too_large_hint(self) -> str:
        fmt = self.kind.replace("png16", "png").upper()
        return (
            f"{fmt if fmt != 'IMAGE' else 'this format'} is decoded whole, it has no windows: convert it to "
            f"a tiled TIFF (e.g. {CONVERT_HINT})"
        )

    def check_readable(self) -> None:
        self.check_decodable()

    def _read_stored(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self._decoded is None:
            self.check_decodable()
            self._decoded = self._decode()
        return self._decoded[y0:y1, x0:x1]

    def _decode(self) -> np.ndarray:
        if self.kind == "png16":
            import imagecodecs

            try:
                self._fh.seek(0)
                arr = np.asarray(imagecodecs.png_decode(self._fh.read()))
            except Exception as exc:  # noqa: BLE001
                raise fail(self.path, reason_of(exc)) from None
            finally:
                self.close()
        else:
            arr = self._decode_pillow()
        if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
            raise fail(self.path, f"has {arr.shape[2]} channels; 1 (grey), 3 (RGB) or 4 (RGBA) expected")
        return arr

    def _decode_pillow(self) -> np.ndarray:
        im = self._im
        try:
            im.load()
            mode = im.mode
            if mode == "1":
                im = im.convert("L")
            elif mode in ("P", "PA") and self.raw:
                im = im if mode == "P" else im.getchannel(0)
            elif mode in _RGB_MODES and mode != "RGB":
                im = im.convert("RGB")
            elif mode in ("LA", "La"):
                im = im.getchannel(0)
            arr = np.asarray(im)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a problem with the user's file
            raise fail(self.path, reason_of(exc)) from None
        finally:
            self.close()
        if arr.dtype.byteorder == ">":  # "I;16B" and friends
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr

    def read_all(self) -> np.ndarray:
        self.check_decodable()
        return self.finish(self._read_stored(0, self.shape[0], 0, self.shape[1]))

    def close(self) -> None:
        if self._im is not None:
            self._im.close()
            self._im = None
        self._fh.close()
