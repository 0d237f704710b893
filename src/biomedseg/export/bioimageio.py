"""``biomedseg export --format bioimageio``: a bioimage.io model package (format 0.5, a zip).

Built with ``bioimageio.spec``'s Python API (``ModelDescr`` + ``save_bioimageio_package``, which
validates it); what it holds:

- ``rdf.yaml``: input ``input`` ``(batch, channel, y, x)`` float32 *raw* pixel values (sizes
  ``min + n * step`` with both the architecture's size multiple) with the run's normalisation
  as bioimage.io preprocessing (``fixed_zero_mean_unit_variance`` per channel; with clipping
  bounds the exact equivalent ``scale_linear`` -> ``clip [0, 1]`` -> ``scale_linear`` per
  channel); output ``probabilities`` ``(batch, channel = class, y, x)`` (the network's logits,
  ``softmax`` postprocessing), and ``image_logit`` ``(batch, 1)`` when the run has a classifier
  head; ``config.biomedseg`` = the metadata document (sliding window, classes, palette,
  post-processing: what ``biomedseg predict package.zip`` uses);
- weights: ONNX (with the metadata in ``metadata_props``) and TorchScript (extra file);
- test input/output tensors (``.npy``): one patch of the first parity image (raw), and the
  expected outputs computed by the run's PyTorch network;
- a cover (the test patch beside its predicted classes), ``README.md`` (documentation),
  the licence (``--license``, an SPDX id), authors (``--author``; without it
  :data:`DEFAULT_AUTHOR`, never the login name) and citations.

Consumers (deepImageJ, ilastik, QuPath, BiaPy) tile with their own blending; biomedseg's own
Gaussian sliding window and post-processing are applied by ``biomedseg predict package.zip``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from biomedseg.core.errors import UserError
from biomedseg.export.parity import MAX_ABS_DIFF, MIN_AGREEMENT

#: the architecture's paper, cited in the package (U-Net's for architectures not listed)
CITATIONS = {
    "unet": (
        "Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015.",
        "10.1007/978-3-319-24574-4_28",
    ),
    "segnet": (
        "Badrinarayanan, Kendall, Cipolla. SegNet: A Deep Convolutional Encoder-Decoder Architecture for "
        "Image Segmentation. IEEE TPAMI 2017.",
        "10.1109/TPAMI.2016.2644615",
    ),
    "resnet": ("He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016.", "10.1109/CVPR.2016.90"),
}
#: the package's author when ``--author`` is not given (never the login name: the package is shared)
DEFAULT_AUTHOR = "biomedseg user (no --author given)"
MONAI_CITATION = (
    "Cardoso et al. MONAI: An open-source framework for deep learning in healthcare. 2022.",
    "10.48550/arXiv.2211.02701",
)


def identifier(text: str, fallback: str) -> str:
    """``text`` as a bioimage.io identifier (letters, digits, ``_``; starting with a letter)."""
    s = re.sub(r"[^0-9a-zA-Z_]+", "_", str(text)).strip("_")
    return s if s and s[0].isalpha() else f"{fallback}_{s}" if s else fallback


def _citations(architecture: str) -> list:
    from bioimageio.spec.model.v0_5 import CiteEntry, Doi

    keys = [k for k in CITATIONS if k in architecture] or ["unet"]
    return [CiteEntry(text=CITATIONS[k][0], doi=Doi(CITATIONS[k][1])) for k in keys] + [
        CiteEntry(text=MONAI_CITATION[0], doi=Doi(MONAI_CITATION[1]))
    ]


# ---------------------------------------------------------------- tensors


def _preprocessing(norm: dict) -> list:
    """The run's normalisation as bioimage.io preprocessing steps (see module docstring)."""
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ClipDescr,
        ClipKwargs,
        EnsureDtypeDescr,
        EnsureDtypeKwargs,
        FixedZeroMeanUnitVarianceAlongAxisKwargs,
        FixedZeroMeanUnitVarianceDescr,
        ScaleLinearAlongAxisKwargs,
        ScaleLinearDescr,
    )

    channel = AxisId("channel")
    mean, std = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
    steps = [EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32"))]
    clip = norm.get("clip")
    if not clip:
        return steps + [
            FixedZeroMeanUnitVarianceDescr(
                kwargs=FixedZeroMeanUnitVarianceAlongAxisKwargs(axis=channel, mean=mean, std=std)
            )
        ]
    low, high = [float(v) for v in clip["low"]], [float(v) for v in clip["high"]]
    span = [max(h - lo, 1e-12) for lo, h in zip(low, high)]
    return steps + [
        ScaleLinearDescr(
            kwargs=ScaleLinearAlongAxisKwargs(
                axis=channel, gain=[1 / s for s in span], offset=[-lo / s for lo, s in zip(low, span)]
            )
        ),
        ClipDescr(kwargs=ClipKwargs(min=0.0, max=1.0)),
        ScaleLinearDescr(
            kwargs=ScaleLinearAlongAxisKwargs(
                axis=channel,
                gain=[s / d for s, d in zip(span, std)],
                offset=[(lo - m) / d for lo, m, d in zip(low, mean, std)],
            )
        ),
    ]


def sample_patch(loaded, images, multiple: int) -> np.ndarray:
    """``(1, C, s, s) float32`` raw test input: the top-left patch of the first image (reflect-padded
    when smaller), ``s`` = the patch size rounded up to the size multiple."""
    from biomedseg.engine.sliding_window import reflect_pad
    from biomedseg.io import conform_channels

    s = -(-int(loaded.tile_size) // multiple) * multiple
    image = np.moveaxis(conform_channels(np.asarray(images[0][1]), loaded.info.channels), -1, 0)
    image = image[:, :s, :s].astype(np.float32)
    h, w = image.shape[1:]
    image = reflect_pad(image, 0, s - h, 0, s - w) if (h < s or w < s) else image
    return np.ascontiguousarray(image[None])


@torch.no_grad()
def expected_outputs(loaded, x: np.ndarray) -> list[np.ndarray]:
    """The test outputs: softmax probabilities ``(1, K, s, s)`` (and ``image_logit (1, 1)``)."""
    from biomedseg.models.heads import find_classifier

    normalised = loaded.normalizer(np.moveaxis(x[0], 0, -1))[None]
    model = loaded.model.float().cpu().eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(normalised)))
    outs = [torch.softmax(logits, dim=1).numpy()]
    head = find_classifier(model)
    if head is not None:
        outs.append(head.class_logits[:, None].numpy())
    return outs


def _tensors(loaded, doc: dict, files: dict) -> tuple[list, list]:
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        FileDescr,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        OutputTensorDescr,
        ParameterizedSize,
        SizeReference,
        SoftmaxDescr,
        SoftmaxKwargs,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
    )

    m = int(doc["network"]["size_multiple"])
    channels = [f"channel{i}" for i in range(loaded.info.channels)]
    space_in = [SpaceInputAxis(id=AxisId(a), size=ParameterizedSize(min=m, step=m)) for a in ("y", "x")]
    inp = InputTensorDescr(
        id=TensorId("input"),
        axes=[BatchAxis(), ChannelAxis(channel_names=channels), *space_in],
        data=IntervalOrRatioDataDescr(type="float32"),
        test_tensor=FileDescr(source=files["x"]),
        sample_tensor=FileDescr(source=files["sample_x"]),
        preprocessing=_preprocessing(doc["normalization"]),
        description="raw image (any intensity range; grey/RGB as the training images)",
    )
    names = [identifier(c, "class") for c in loaded.classes]
    space_out = [
        SpaceOutputAxis(id=AxisId(a), size=SizeReference(tensor_id=TensorId("input"), axis_id=AxisId(a)))
        for a in ("y", "x")
    ]
    outputs = [
        OutputTensorDescr(
            id=TensorId("probabilities"),
            axes=[BatchAxis(), ChannelAxis(channel_names=names), *space_out],
            data=IntervalOrRatioDataDescr(type="float32"),
            test_tensor=FileDescr(source=files["y0"]),
            sample_tensor=FileDescr(source=files["sample_y0"]),
            postprocessing=[SoftmaxDescr(kwargs=SoftmaxKwargs(axis=AxisId("channel")))],
            description="class probabilities (softmax of the logits); argmax = class mask",
        )
    ]
    if "y1" in files:
        outputs.append(
            OutputTensorDescr(
                id=TensorId("image_logit"),
                axes=[BatchAxis(), ChannelAxis(channel_names=["contains_foreground"])],
                data=IntervalOrRatioDataDescr(type="float32"),
                test_tensor=FileDescr(source=files["y1"]),
                description="image-level 'contains foreground' logit (classifier head)",
            )
        )
    return [inp], outputs


# ---------------------------------------------------------------- files


def _cover(loaded, x: np.ndarray, proba: np.ndarray, path: Path) -> None:
    """The test patch (display-scaled) beside its predicted classes over it: a 2:1 PNG."""
    from biomedseg.core.render import class_overlay, to_display_rgb
    from biomedseg.io import write_png

    image = np.moveaxis(x[0], 0, -1)
    mask = proba[0].argmax(0).astype(np.uint8)
    write_png(
        path, np.concatenate([to_display_rgb(image), class_overlay(image, mask, background=loaded.background)], axis=1)
    )


def documentation(doc: dict) -> str:
    """``README.md`` of the package: what the model does and how to run it exactly."""
    net, sw, norm = doc["network"], doc["sliding_window"], doc["normalization"]
    classes = ", ".join(f"{i}: {c}" for i, c in enumerate(doc["classes"]["names"]))
    clip = norm.get("clip")
    post = "the run's post-processing chain (`config.biomedseg.postprocess`)" if doc.get("postprocess") else "argmax"
    return f"""# biomedseg {net["architecture"]} segmentation model

Semantic segmentation of 2D images into {len(doc["classes"]["names"])} classes ({classes}),
trained with [biomedseg](https://pypi.org/project/biomedseg/) ({doc["biomedseg_version"]}).

## Input
`input` (batch, channel, y, x): the raw image as float32, {doc["input"]["channels"]} channel(s)
({doc["input"]["conform"]}). Spatial sizes: multiples of {net["size_multiple"]}.
Preprocessing (in the package): per-channel z-score with mean {norm["mean"]} and std {norm["std"]}
{f"after clipping to [{clip['low']}, {clip['high']}]" if clip else "(no clipping)"}.

## Outputs
`probabilities` (batch, class, y, x): softmax of the network's logits; the class mask is the argmax.
{"`image_logit` (batch, 1): the classifier head's 'contains foreground' logit." if len(net["outputs"]) > 1 else ""}

## Reproducing biomedseg's prediction exactly
biomedseg predicts whole images with a sliding window of {sw["patch_size"]} px patches, overlap
{sw["overlap"]}, Gaussian blending of the logits, and {post}:

    biomedseg predict this_package.zip IMAGES... --out OUT

`config.biomedseg` in `rdf.yaml` holds all of it (format `{doc["format"]}` version {doc["version"]}).
Deep supervision: {net["deep_supervision"]}.

## Weights
TorchScript ({net.get("torchscript")}) and ONNX (opset {net.get("onnx_opset")}), both exported from the
same PyTorch network (dynamic batch and spatial axes).

## Validation
Before writing this package, `biomedseg export` predicted the run's validation images (or, when
its training data was gone, synthetic images) through biomedseg's sliding window with each of
the two weights and with the original PyTorch network, and required a largest probability
difference of at most {MAX_ABS_DIFF:g} and argmax agreement on at least {100 * MIN_AGREEMENT:g}% of the
pixels; the numbers are in the `.parity.json` file written beside the package. The test tensors were computed by
the PyTorch network.
"""


def _write_files(tmp: Path, loaded, doc: dict, proto, module, images) -> dict:
    """Weights, test and sample tensors, cover and README in ``tmp``; returns their paths."""
    import onnx
    import tifffile

    from biomedseg.inference.exported import graph
    from biomedseg.inference.exported.format import metadata_json

    text = metadata_json(doc)
    files = {
        "onnx": tmp / "weights.onnx",
        "torchscript": tmp / "weights_torchscript.pt",
        "x": tmp / "test_input.npy",
        "y0": tmp / "test_output_probabilities.npy",
        "cover": tmp / "cover.png",
        "doc": tmp / "README.md",
        "sample_x": tmp / "sample_input.tif",
        "sample_y0": tmp / "sample_output_probabilities.tif",
    }
    graph.set_onnx_metadata(proto, text)
    onnx.save_model(proto, str(files["onnx"]))
    graph.save_torchscript(module, files["torchscript"], text)
    x = sample_patch(loaded, images, int(doc["network"]["size_multiple"]))
    outs = expected_outputs(loaded, x)
    np.save(files["x"], x)
    np.save(files["y0"], outs[0])
    for key, array in (("sample_x", x), ("sample_y0", outs[0])):  # for people and viewers (TIFF)
        tifffile.imwrite(files[key], array[0])
    if len(outs) > 1:
        files["y1"] = tmp / "test_output_image_logit.npy"
        np.save(files["y1"], outs[1])
    _cover(loaded, x, outs[0], files["cover"])
    files["doc"].write_text(documentation(doc), encoding="utf-8")
    return files


def model_description(loaded, doc: dict, files: dict, options: dict):
    """The ``ModelDescr`` (format 0.5) of the package."""
    from bioimageio.spec.model.v0_5 import (
        Author,
        FileDescr,
        LicenseId,
        ModelDescr,
        OnnxWeightsDescr,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    net = doc["network"]
    inputs, outputs = _tensors(loaded, doc, files)
    authors = [Author(name=a) for a in (options.get("authors") or [DEFAULT_AUTHOR])]
    weights = WeightsDescr(
        onnx=OnnxWeightsDescr(source=files["onnx"], opset_version=int(net["onnx_opset"]), parent="torchscript"),
        torchscript=TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=Version(torch.__version__.split("+")[0])
        ),
    )
    names = ", ".join(loaded.classes)
    return ModelDescr(
        name=f"biomedseg {net['architecture']} {identifier(Path(doc['source']['run']).name, 'run')}"[:128],
        description=f"2D semantic segmentation ({names}) by a {net['architecture']} trained with biomedseg",
        authors=authors,
        cite=_citations(net["architecture"]),
        license=LicenseId(options.get("license")),
        documentation=FileDescr(source=files["doc"]),
        covers=[FileDescr(source=files["cover"])],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        tags=["biomedseg", "segmentation", "semantic-segmentation", "2d", identifier(net["architecture"], "net")],
        config={"biomedseg": doc},
    )


def write_package(path, loaded, doc: dict, proto, module, images, options: dict) -> Path:
    """Write the bioimage.io package of ``loaded`` to ``path`` (validated by bioimageio.spec)."""
    from biomedseg.inference.exported.graph import require

    require("bioimageio.spec")
    from bioimageio.spec import ValidationContext, save_bioimageio_package

    with tempfile.TemporaryDirectory(prefix="biomedseg-bioimageio-") as tmp:
        files = _write_files(Path(tmp), loaded, doc, proto, module, images)
        try:
            with ValidationContext(perform_io_checks=True):
                descr = model_description(loaded, doc, files, options)
            save_bioimageio_package(descr, output_path=Path(path))
        except ValueError as exc:  # pydantic ValidationError and bioimageio's own
            raise UserError(f"{path}: bioimage.io validation failed ({' '.join(str(exc).split())[:300]})") from None
    return Path(path)
