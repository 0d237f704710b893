"""The ``predictions.csv`` row and ``--uncertainty`` map of a streamed (huge) input, band by band.

:class:`BandStats` is the per-band class decision of a streamed prediction (it wraps the
post-processing's per-class thresholds, else argmax, and returns the same mask), and meanwhile
adds up per class the predicted area, the probability mass and the probability on the predicted
pixels, and the entropy: enough for the areas, the mean foreground probability,
:func:`~biomedseg.metrics.uncertainty.mean_entropy` and
:func:`~biomedseg.metrics.uncertainty.expected_dice_loss` (sums only) without holding the image.
Objects (connected across bands) and out-of-distribution scores are not computed for streamed
inputs. With a target path, each band's entropy goes into a temporary OME-Zarr next to it, turned
into a tiled float16 OME-TIFF (with sub-resolutions when large, like the streamed masks) by
:meth:`BandStats.finish`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

#: tile side of the streamed uncertainty map
UNCERTAINTY_TILE = 256
STREAMED_NOTE = "streamed (large input): objects and out-of-distribution scores not computed"


class BandStats:
    """``(K, n, W)`` probabilities -> ``(n, W) uint8`` mask, bands in order top to bottom."""

    def __init__(self, classes, background, decide, shape, pixel_size, target: Path | None = None):
        from biomedseg.stream.writers import ZarrArrayWriter

        k = len(classes)
        self.classes, self.background, self.decide = list(classes), background, decide
        self.shape, self.pixel_size, self.y = tuple(int(s) for s in shape), pixel_size, 0
        self.area, self.mass, self.hit = np.zeros(k, np.int64), np.zeros(k), np.zeros(k)
        self.entropy = 0.0  # sum of the normalised entropy over the pixels
        self.tmp = None if target is None else Path(target).with_name(Path(target).name + ".tmp.zarr")
        self.store = (
            None
            if self.tmp is None
            else ZarrArrayWriter(self.tmp, self.shape, np.float16, UNCERTAINTY_TILE, "yx", pixel_size)
        )

    def __call__(self, p: np.ndarray) -> np.ndarray:
        import torch

        from biomedseg.engine.band_accumulator import argmax0
        from biomedseg.metrics.uncertainty import entropy_map

        p = np.asarray(p)
        if self.decide is not None:
            m = np.asarray(self.decide(p), dtype=np.uint8)
        else:  # what the streaming predictor does without a decision of its own
            m = argmax0(torch.from_numpy(p)).numpy()
        for c in range(len(self.classes)):
            on = m == c
            self.area[c] += int(on.sum())
            self.mass[c] += float(p[c].sum(dtype=np.float64))
            self.hit[c] += float(p[c][on].sum(dtype=np.float64))
        ent = entropy_map(p)
        self.entropy += float(ent.sum(dtype=np.float64))
        if self.store is not None:
            self.store.write(self.y, ent.astype(np.float16))
        self.y += m.shape[0]
        return m

    def row(self) -> dict:
        """The columns of :func:`~.rows.prediction_row` that sums give (objects and OOD empty)."""
        from biomedseg.metrics.uncertainty import DEFAULT_SCORE

        fg = [c for c in range(len(self.classes)) if c != self.background]
        row: dict = {"height": self.shape[0], "width": self.shape[1]}
        for c in fg:
            row[f"area_{self.classes[c]}"] = int(self.area[c])
            row[f"objects_{self.classes[c]}"] = None
        n_fg = int(self.area[fg].sum()) if fg else 0
        row["mean_foreground_probability"] = float(self.hit[fg].sum() / n_fg) if n_fg else None
        row["uncertainty"] = self.scores().get(DEFAULT_SCORE)
        row.update({"ood_score": None, "ood_flag": None, "ood_reasons": None})
        return row

    def scores(self) -> dict[str, float]:
        """The per-image scores of :data:`~biomedseg.metrics.uncertainty.IMAGE_SCORES` that sums give:
        ``mean_entropy`` and ``expected_dice_loss`` (not ``boundary_entropy``: boundaries cross bands)."""
        fg = [c for c in range(len(self.classes)) if c != self.background]
        dices = [
            2.0 * self.hit[c] / (self.mass[c] + self.area[c]) for c in fg if self.area[c] > 0 or self.mass[c] >= 1.0
        ]
        return {
            "mean_entropy": self.entropy / max(self.shape[0] * self.shape[1], 1),
            "expected_dice_loss": float(1.0 - np.mean(dices)) if dices else 0.0,
        }

    def note(self) -> str:
        from biomedseg.metrics.uncertainty import DEFAULT_SCORE

        extra = "" if DEFAULT_SCORE in self.scores() else f"; {DEFAULT_SCORE} needs the whole image"
        return STREAMED_NOTE + extra

    def finish(self, path: Path) -> Path | None:
        """Write the tiled ``(H, W) float16`` OME-TIFF ``path`` from the bands (atomic); ``None``
        without a map."""
        from biomedseg.io.ome import array_tiles, write_ome_levels
        from biomedseg.io.writers import BIGTIFF_BYTES, atomic_path

        if self.store is None:
            return None
        t, store = UNCERTAINTY_TILE, self.store
        levels = [(self.shape, array_tiles(store.array, t))]
        levels += [(hw, array_tiles(store.arrays[i], t)) for i, hw in enumerate(store.shapes) if i]
        try:
            with atomic_path(path) as tmp:
                write_ome_levels(
                    tmp,
                    levels,
                    dtype=np.float16,
                    axes="YX",
                    tile=t,
                    pixel_size=self.pixel_size,
                    bigtiff=int(np.prod(self.shape)) * 2 > BIGTIFF_BYTES,
                )
        finally:
            self.discard()
        return Path(path)

    def discard(self) -> None:
        """Remove the temporary zarr."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.store = None
