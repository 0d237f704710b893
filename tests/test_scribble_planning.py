"""Scribbles (sparse partial labels): object sizes from strokes, the working scale they imply, and
training windows drawn like those of full labels (issue 23)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from biomedseg.core.labels import IGNORE_INDEX
from biomedseg.planning.planner import fingerprint_from_samples
from biomedseg.planning.scale import plan_working_scale

NAMES = ["background", "head"]


def _disk_scribble(h=400, w=600, radius=150, length=200):
    """A disk of ``radius`` with a 3 px stroke of ``length`` through its centre, and a background stroke
    along the top; everything else unlabelled. Returns ``(scribble, full mask)``."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h // 2, w // 2
    full = (((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2).astype(np.uint8)
    s = np.full((h, w), IGNORE_INDEX, np.uint8)
    s[cy - 1 : cy + 2, cx - length // 2 : cx + length // 2] = 1
    s[10:13, 20 : w - 20] = 0
    assert np.array_equal(s[s != IGNORE_INDEX], full[s != IGNORE_INDEX])
    return s, full


def _sample(mask):
    return SimpleNamespace(image=np.zeros((*mask.shape, 1), np.uint8), mask=mask)


def test_fingerprint_takes_object_sizes_from_strokes_when_no_image_is_fully_labelled():
    s, full = _disk_scribble(length=200)
    fp = fingerprint_from_samples([_sample(s)] * 3, 2, NAMES, 0, 1)
    assert fp["labelled_fraction"] < 0.05
    assert fp["object_size_source"] == {"head": "strokes"}
    assert 195 <= fp["object_diameter_p90"]["head"] <= 205  # the stroke's length, not its 3 px width
    assert fp["object_diameter_p90"]["head"] < 2 * 150  # a lower bound of the disk's diameter
    assert "head" not in fp["structure_width"]  # a stroke's width is the annotator's, not the object's
    # one fully labelled image holds the class: its objects are measured, the strokes are not used
    mixed = fingerprint_from_samples([_sample(s), _sample(full)], 2, NAMES, 0, 1)
    assert "object_size_source" not in mixed
    assert abs(mixed["object_diameter_p90"]["head"] - 300) < 5


def test_large_objects_scribbled_get_a_working_scale_and_full_labels_keep_their_rule():
    s, _ = _disk_scribble(h=900, w=1200, radius=300, length=200)
    fp = fingerprint_from_samples([_sample(s)] * 2, 2, NAMES, 0, 1)
    scale = plan_working_scale(fp, 256)
    assert scale["value"] < 0.5, scale  # 4 strokes of 200 px need 800 px of context: shrink to fit 256
    assert "lower bound" in scale["reason"]
    # the same sizes measured without widths and not from strokes: still native (unchanged rule)
    unknown = {k: v for k, v in fp.items() if k != "object_size_source"}
    assert plan_working_scale(unknown, 256)["value"] == 1.0
    # short strokes (small objects): the small-object floor keeps native resolution
    small, _ = _disk_scribble(radius=12, length=10)
    fp_small = fingerprint_from_samples([_sample(small)] * 3, 2, NAMES, 0, 1)
    assert plan_working_scale(fp_small, 256)["value"] == 1.0


def test_windows_of_a_scribbled_image_are_drawn_as_on_a_fully_labelled_one():
    """A small object's stroke in one corner and a background stroke across the image: windows are uniform
    among those holding a labelled pixel, so the object's corner gets its area's share, not half of them
    (the earlier rule chose a class first and centred the window on one of its pixels)."""
    from biomedseg.data.datasets import CachedSample, PatchSampler, index_class_pixels

    mask = np.full((256, 256), IGNORE_INDEX, np.uint8)
    mask[4:8, 4:12] = 1  # the object's stroke, top left
    mask[127:130, :] = 0  # a background stroke across the middle
    s = CachedSample(
        "a", np.zeros((256, 256, 1), np.uint8), mask, index_class_pixels(mask, 2, np.random.default_rng(0))
    )
    sampler = PatchSampler([s], 64, 2, None, None, fg_oversample=0.0, seed=0)
    windows = [sampler._window() for _ in range(400)]
    crops = [mask[max(y, 0) : y + 64, max(x, 0) : x + 64] for _, y, x in windows]
    assert all((c != IGNORE_INDEX).any() for c in crops)  # every window holds something to learn from
    assert np.mean([(c == 1).any() for c in crops]) < 0.15  # about its share of the windows, not 1/2
    starts = np.array([x for _, _, x in windows])
    assert starts.min() < 20 and starts.max() > 172 and 70 < starts.mean() < 122  # spread along the stroke
    # nothing labelled near a window's uniform draws: one around a labelled pixel after the tries
    tiny = np.full((2048, 2048), IGNORE_INDEX, np.uint8)
    tiny[1000:1003, 1000:1003] = 1
    s2 = CachedSample(
        "b", np.zeros((2048, 2048, 1), np.uint8), tiny, index_class_pixels(tiny, 2, np.random.default_rng(0))
    )
    far = PatchSampler([s2], 64, 2, None, None, fg_oversample=0.0, seed=0)
    assert all((tiny[y : y + 64, x : x + 64] == 1).any() for _, y, x in (far._window() for _ in range(20)))
