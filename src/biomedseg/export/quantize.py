"""``biomedseg export RUN --format onnx --int8 [--calibrate DATA]``: static int8 quantisation.

The fp32 ONNX graph of :mod:`~biomedseg.export.writer` is quantised by ONNX Runtime
(``onnxruntime.quantization.quantize_static``): QDQ format (QuantizeLinear/DequantizeLinear pairs
around each quantised operator, which ORT fuses into int8 kernels), int8 weights per output channel,
int8 activations whose ranges come from MinMax calibration on tiles of real images. Only the
convolutions are quantised, and not the first one (it sees the normalised image) nor the last one
(it writes the logits): on a tiny trained U-Net that took the argmax agreement with PyTorch from
97.9 % (every convolution; the same with all operators quantised) to 99.05 %.

Calibration tiles are cut from the run's validation images (default) or from the images of
``--calibrate DATA``, read by biomedseg's own reader, conformed to the run's channels and
normalised by the run's normaliser, at the run's tile size: the inputs the network sees in
``predict``. The result is a normal exported ONNX file whose metadata adds ``int8: true`` and a
``quantization`` section (calibration source, number of tiles, method); ``predict`` runs it through
the exported path. int8 is not bit-exact, so its parity check against PyTorch asks argmax agreement
of :data:`INT8_MIN_AGREEMENT` and does not bound the probability difference (it is reported).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError

log = logging.getLogger("biomedseg")

DEFAULT_MAX_TILES = 64  # calibration tiles at most (spread over the images, seeded) ...
#: ... and at most this many calibration pixels: ORT's MinMax calibrator holds every intermediate
#: tensor of every tile until it computes the ranges (its ``CalibMaxIntermediateOutputs`` discards
#: the data collected so far in onnxruntime 1.32 instead of folding it into the ranges), so memory
#: grows with the pixels: 2**22 pixels (16 tiles of 512²)
MAX_CALIBRATION_PIXELS = 2**22
CALIBRATION_BATCH = 4  # tiles per calibration forward pass
INT8_MIN_AGREEMENT = 0.99  # parity: argmax agreement with the fp32 PyTorch network
#: the operators quantised (the convolutions: nearly all of the FLOPs); normalisation, PReLU, padding stay fp32
QUANTIZED_OPS = ("Conv", "ConvTranspose")
METHOD = (
    "onnxruntime quantize_static, QDQ, Conv/ConvTranspose except the first and the last (fp32), per-channel int8 "
    "weights, int8 activations, MinMax calibration"
)


@dataclass(frozen=True)
class Int8Options:
    """How ``export --int8`` quantises: ``calibrate`` a folder of images (or a data folder with
    ``images/``), ``None`` for the run's validation images; at most ``max_tiles`` tiles, picked with
    ``seed``."""

    calibrate: Path | None = None
    max_tiles: int = DEFAULT_MAX_TILES
    seed: int = 0


def calibration_tiles(loaded, images, max_tiles: int = DEFAULT_MAX_TILES, seed: int = 0) -> list[np.ndarray]:
    """``(C, P, P) float32`` tiles of ``images`` (``[(id, raw (H, W, C))]``) as predict feeds them:
    conformed to the run's channels, normalised, cut on a non-overlapping grid at the run's tile
    size ``P`` (images smaller than a tile are reflect-padded); ``max_tiles`` of them at most (and
    :data:`MAX_CALIBRATION_PIXELS`), picked with ``seed``."""
    from biomedseg.io import conform_channels

    p = int(loaded.tile_size)
    tiles = []
    for _, image in images:
        x = loaded.normalizer(conform_channels(image, loaded.info.channels))
        pad_h, pad_w = max(0, p - x.shape[1]), max(0, p - x.shape[2])
        if pad_h or pad_w:
            x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect" if min(x.shape[1:]) > 1 else "edge")
        for y in range(0, x.shape[1] - p + 1, p):
            for xx in range(0, x.shape[2] - p + 1, p):
                tiles.append(np.ascontiguousarray(x[:, y : y + p, xx : xx + p], dtype=np.float32))
    max_tiles = max(1, min(max_tiles, MAX_CALIBRATION_PIXELS // (p * p)))
    if len(tiles) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(tiles), max_tiles, replace=False))
        tiles = [tiles[i] for i in keep]
    return tiles


def calibration_images(loaded, options: Int8Options) -> tuple[list[tuple[str, np.ndarray]], str]:
    """``([(id, raw image)], description)`` to calibrate with; a UserError when there are none."""
    from biomedseg.io import is_image_path, read_image

    if options.calibrate is None:
        from biomedseg.data.splits import select_split

        try:
            source, ids, by_id = select_split(loaded, None, None, None, "val")
        except UserError as exc:
            log.debug("no validation images: %s", exc)
            raise UserError(
                f"{loaded.run_dir}: no validation images to calibrate --int8 with (training data "
                f"{loaded.info.source!r} not readable here or no validation split); pass --calibrate DATA"
            ) from None
        return [(sid, read_image(by_id[sid].image)) for sid in ids], f"validation images of {source.root.name}"
    folder = Path(options.calibrate)
    if (folder / "images").is_dir():
        folder = folder / "images"
    if not folder.is_dir():
        raise UserError(f"{options.calibrate}: no such folder (--calibrate takes a folder of images)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
    if not files:
        raise UserError(f"{folder}: no images to calibrate --int8 with")
    name = folder.parent.name if folder.name == "images" else folder.name
    return [(p.stem, read_image(p)) for p in files], f"images of {name}"


class _TileReader:
    """ONNX Runtime's calibration data reader: the tiles in batches of :data:`CALIBRATION_BATCH`."""

    def __init__(self, tiles: list[np.ndarray], input_name: str):
        self.batches = [np.stack(tiles[i : i + CALIBRATION_BATCH]) for i in range(0, len(tiles), CALIBRATION_BATCH)]
        self.input_name, self.i = input_name, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.input_name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize_onnx(proto, out: Path, tiles: list[np.ndarray]):
    """Quantise the fp32 ``proto`` (ModelProto) with ``tiles``; returns the int8 ModelProto (also
    left at ``out``; the caller sets the metadata and writes the final file)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from biomedseg.inference.exported.graph import INPUT_NAME

    convs = [n.name for n in proto.graph.node if n.op_type in QUANTIZED_OPS]
    if not tiles:
        raise UserError(f"{out}: no calibration tiles (images smaller than anything usable)")
    fp32 = out.with_name(out.stem + ".fp32.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantiser logs per-tensor notes on the root logger
    try:
        onnx.save_model(proto, str(fp32))
        quantize_static(
            str(fp32),
            str(out),
            _TileReader(tiles, INPUT_NAME),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=[convs[0], convs[-1]] if len(convs) > 2 else [],
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        root.setLevel(level)
        fp32.unlink(missing_ok=True)
    return onnx.load(str(out))


def quantization_section(description: str, n_tiles: int, tile: int) -> dict:
    return {"int8": True, "method": METHOD, "calibration": description, "tiles": n_tiles, "tile_size": tile}
