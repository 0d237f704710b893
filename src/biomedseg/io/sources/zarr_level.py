"""zarr / OME-Zarr folders (:mod:`biomedseg.io.zarr_images`): windows read from the chunks they
touch; OME multiscales levels are the pyramid levels; a chunk above ``max_decode_pixels`` is refused."""

from __future__ import annotations

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.sources.base import PlannedSource, megapixels
from biomedseg.io.zarr_images import level_shape, open_level


class ZarrSource(PlannedSource):
    """A level of a zarr image."""

    kind = "zarr"

    def __init__(self, path, level: int, raw: bool, max_decode_pixels: int) -> None:
        super().__init__(path, level, raw, max_decode_pixels)
        self._z = z = open_level(self.path, self.level)
        self.level_shapes = [level_shape(z, i, self.name) for i in range(z.n_levels)]
        self._set_array(z.array, z.axes)
        chunks = getattr(z.array, "chunks", None)
        self.tile = (int(chunks[self._y]), int(chunks[self._x])) if chunks else None
        self._checked = False

    def _read_stored(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.check_readable()
        return super()._read_stored(y0, y1, x0, x1)

    def check_readable(self) -> None:
        if not self._checked:
            chunk_px = self.tile[0] * self.tile[1] if self.tile else self.shape[0] * self.shape[1]
            if chunk_px > self.max_decode_pixels:
                raise UserError(
                    f"{self.path}: is stored in zarr chunks of {megapixels(chunk_px)} megapixels, above "
                    f"the {megapixels(self.max_decode_pixels)}-megapixel decoding limit; re-chunk it "
                    "(e.g. 1024x1024) or raise the limit"
                )
            self._checked = True

    def _find_pixel_size(self):
        from biomedseg.io.pixel_size import zarr_level_pixel_size

        return zarr_level_pixel_size(self._z, self.level)
