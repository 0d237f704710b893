"""Where prediction writes and what it reads: the inputs of ``predict``, the paths of its masks,
finished outputs (a rerun skips them), and the in-memory OME-Zarr mask writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError

TIFF_ABOVE_PIXELS = 8192 * 8192  # larger in-memory masks go to tiled TIFF (PNG has no tiling)
OUTPUT_FORMATS = ("png", "tiff", "zarr")


STREAM_ABOVE_PIXELS = 4096 * 4096  # larger inputs are predicted band by band (bounded memory)
TILED_STREAM_ABOVE_PIXELS = 2048 * 2048  # tiled TIFF inputs above this are streamed too


def collect_inputs(inputs) -> list[Path]:
    """Files, folders, globs (``list_inputs``) plus ``.zarr`` folders given directly."""
    from biomedseg.data.discovery import list_inputs

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = [str(i) for i in inputs]
    zarrs = [i for i in inputs if Path(i).suffix.lower() == ".zarr" and Path(i).is_dir()]
    others = [i for i in inputs if i not in zarrs]
    files = list_inputs(others) if others else []
    files = files + [Path(z) for z in zarrs]
    if not files:
        raise UserError(f"{', '.join(map(str, inputs))}: no images found")
    return files


def output_stem(path: Path) -> str:
    return path.name[:-5] if path.name.lower().endswith(".zarr") else path.stem


def existing_mask(out: Path, stem: str) -> Path | None:
    """The finished mask of ``stem`` in ``out`` (``.png``, ``.tif`` or ``.zarr``), if any.
    ``<stem>.partial.*`` files (interrupted streaming) never count."""
    for ext in (".png", ".tif"):
        if (out / f"{stem}{ext}").is_file():
            return out / f"{stem}{ext}"
    z = out / f"{stem}.zarr"
    if z.is_dir() and ((z / ".zgroup").is_file() or (z / "zarr.json").is_file()):
        return z
    return None


def mask_path_for(out: Path, path: Path, n_pixels: int, output_format: str | None = None) -> Path:
    stem = output_stem(path)
    if output_format == "zarr":
        return out / f"{stem}.zarr"
    if output_format == "tiff":
        return out / f"{stem}.tif"
    return out / (
        stem
        + (
            ".tif"
            if n_pixels > TIFF_ABOVE_PIXELS or path.suffix.lower() in (".tif", ".tiff") and n_pixels > 4096 * 4096
            else ".png"
        )
    )


def check_not_input(mask_path: Path, path: Path) -> None:
    if mask_path.resolve() == path.resolve():
        raise UserError(f"{path}: its mask would overwrite the input; write to another --out folder")


def remove_other_formats(out: Path, stem: str, keep: Path, path: Path) -> None:
    """``--overwrite`` with another format: drop the old mask (never the input itself)."""
    import shutil

    for other in (out / f"{stem}.png", out / f"{stem}.tif", out / f"{stem}.zarr"):
        if other != keep and other.exists() and other.resolve() != path.resolve():
            shutil.rmtree(other) if other.is_dir() else other.unlink()


def write_zarr_mask(path: Path, mask: np.ndarray, pixel_size=None) -> None:
    """In-memory mask -> multiscale OME-Zarr, via ``<stem>.partial.zarr`` renamed when complete."""
    from biomedseg.stream.predictor import _finish, _ZarrArrayWriter, partial_path

    part = partial_path(path)
    w = _ZarrArrayWriter(part, mask.shape, np.uint8, 256, "yx", pixel_size)
    w.write(0, mask)
    _finish(part, path)
