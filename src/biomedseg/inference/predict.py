"""``biomedseg.predict(...)``: masks for new images of any size.

For each input image: read, conform channels, normalise as in training, sliding-window
inference with Gaussian blending, then write (atomically) ``<stem>.png`` (class-index mask;
``.tif`` above ``tiff_above`` pixels), optionally ``<stem>_overlay.png`` and
``<stem>_proba.tif`` (float16 ``(K, H, W)``). One unreadable input is reported and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.errors import UserError

log = logging.getLogger("biomedseg")

TIFF_ABOVE_PIXELS = 8192 * 8192  # larger masks go to tiled TIFF (PNG has no tiling)


@dataclass
class PredictSummary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)


def predict_image(run, predictor, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, C)`` raw image -> (``(H, W) uint8`` index mask, ``(K, H, W) float32`` probabilities)."""
    from biomedseg.io import conform_channels

    x = run.normalizer(conform_channels(image, run.info["channels"]))
    proba = predictor.predict_proba(x)
    return proba.argmax(0).astype(np.uint8), proba


def predict(run, inputs, out, *, tta: bool = False, overlays: bool = True, probabilities: bool = False,
            overwrite: bool = False, device: str = "auto", quiet: bool = False) -> PredictSummary:
    """Predict every image of ``inputs`` (files, folders, globs) with the run folder ``run``.

    Returns a :class:`PredictSummary`; the CLI exits non-zero when ``failed`` is not empty.
    """
    from tqdm.auto import tqdm

    from biomedseg.data.discovery import list_inputs
    from biomedseg.inference.run import LoadedRun, load_run
    from biomedseg.io import read_image, write_png, write_tiff

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files = list_inputs([str(i) for i in inputs])
    if not files:
        raise UserError(f"{', '.join(map(str, inputs))}: no images found")
    loaded = run if isinstance(run, LoadedRun) else load_run(run, device=device)
    predictor = loaded.predictor(tta=tta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    for path in tqdm(files, desc="predicting", unit="img", disable=True if (quiet or len(files) < 2) else None):
        try:
            summary.outputs.extend(_predict_one(loaded, predictor, path, out, overlays, probabilities, overwrite,
                                                summary, read_image, write_png, write_tiff))
        except UserError as exc:
            summary.failed.append((path, str(exc)))
            log.error("%s", exc)
    return summary


def _mask_path(out: Path, path: Path, n_pixels: int) -> Path:
    return out / (path.stem + (".tif" if n_pixels > TIFF_ABOVE_PIXELS or path.suffix.lower() in (".tif", ".tiff")
                               and n_pixels > 4096 * 4096 else ".png"))


def _predict_one(run, predictor, path, out, overlays, probabilities, overwrite, summary,
                 read_image, write_png, write_tiff) -> list[Path]:
    existing = [p for p in (out / f"{path.stem}.png", out / f"{path.stem}.tif") if p.is_file()]
    if existing and not overwrite:
        summary.skipped.append(path)
        return []
    image = read_image(path)
    mask, proba = predict_image(run, predictor, image)
    written = []
    if overlays:
        from biomedseg.reports.overlays import class_overlay

        ov = out / f"{path.stem}_overlay.png"
        write_png(ov, class_overlay(image, mask, background=run.background))
        written.append(ov)
    if probabilities:
        pp = out / f"{path.stem}_proba.tif"
        write_tiff(pp, proba.astype(np.float16))
        written.append(pp)
    # the mask is written last: its presence marks the input as done when a run is resumed
    mask_path = _mask_path(out, path, mask.size)
    (write_tiff if mask_path.suffix == ".tif" else write_png)(mask_path, mask)
    written.append(mask_path)
    summary.done.append(path)
    return written
