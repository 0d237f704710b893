"""Helpers of the napari plugin's tests."""

from __future__ import annotations

import os
from pathlib import Path

#: the tiny network of these tests (one thread: they run beside the rest of the suite)
TINY_NAPARI = {
    "model_kwargs": {"depth": 3, "base_channels": 8, "num_res_units": 0},
    "patch_size": 64,
    "batch_size": 4,
    "iterations_per_epoch": 4,
    "num_threads": 1,
}


#: with ``BIOMEDSEG_SCREENSHOTS`` set the images are larger and the run trains longer, so that the
#: screenshots show a prediction worth looking at (the checks are the same)
SHOTS = bool(os.environ.get("BIOMEDSEG_SCREENSHOTS"))


def screenshot(viewer, name: str, widget=None) -> Path | None:
    """Save a screenshot of the viewer window (or of ``widget``) as ``$BIOMEDSEG_SCREENSHOTS/<name>.png``;
    nothing without that variable (normal runs write nothing in the tree)."""
    folder = os.environ.get("BIOMEDSEG_SCREENSHOTS")
    if not folder:
        return None
    out = Path(folder) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    if widget is not None:
        widget.native.grab().save(str(out))
    else:
        from PIL import Image

        rgb = Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).convert("RGB")
        rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)  # a small PNG
    return out
