"""The scribble maker of benchmarks/scribbles.py: strokes of the right classes on about the asked fraction."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from scribbles import IGNORE, scribble_mask  # noqa: E402


def test_scribbles_keep_classes_on_a_small_fraction_and_touch_every_object():
    rng = np.random.default_rng(0)
    mask = np.zeros((256, 256), np.uint8)
    centres = rng.integers(20, 236, (25, 2))
    yy, xx = np.mgrid[:256, :256]
    for i, (cy, cx) in enumerate(centres):
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1 + i % 2
    s = scribble_mask(mask, 0.05, np.random.default_rng(1))
    labelled = s != IGNORE
    assert 0.02 < labelled.mean() < 0.09
    assert np.array_equal(s[labelled], mask[labelled])  # strokes carry the true class
    from scipy import ndimage

    lab, n = ndimage.label(mask > 0)
    assert set(np.unique(lab[labelled & (mask > 0)])) - {0} == set(range(1, n + 1))  # every object is touched
