"""The network of a run as a self-contained graph: ONNX (``torch.export`` -> ``torch.onnx``) and
TorchScript.

What is exported (:class:`GraphNetwork`): ``input (N, C, H, W) float32`` normalised image ->
``logits (N, K, H, W) float32``, for any batch size and any ``H, W >= size multiple`` (dynamic
axes). The registry's padding to the architecture's size multiple is inside the graph (reflect
padding, as :class:`~biomedseg.models.registry.PadToMultiple` does for inputs at least one multiple
large), and the output is cropped back. Deliberate choices:

- **deep supervision** heads are dropped: they only run in training mode, and the graph is
  traced in eval mode, so only the full-resolution output is exported;
- the **image-level classifier head** (``--classifier-head``) is exported when the run has one, as
  a second output ``image_logit (N, 1)`` (the "contains foreground" logit of the same pass), so
  that ``gating.min_classifier_probability`` of ``postprocess.yaml`` works from the exported file.

ONNX is written by PyTorch's ``torch.export``-based exporter (needs ``onnxscript``) at the opset
:func:`choose_opset` picks for the installed ONNX Runtime. TorchScript traces the network at one
padded size and scripts the padding/cropping around it (so the size arithmetic stays dynamic).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from biomedseg.core.errors import UserError
from biomedseg.models.heads import find_classifier

INPUT_NAME = "input"
LOGITS_NAME = "logits"
HEAD_NAME = "image_logit"
#: newest opset PyTorch 2.13's ``torch.export`` ONNX exporter writes natively (its default); lower
#: when the installed ONNX Runtime cannot run it (:func:`choose_opset`)
EXPORTER_OPSET = 20
#: key of the metadata document in ONNX ``metadata_props`` and TorchScript extra files
METADATA_KEY = "biomedseg"
TORCHSCRIPT_EXTRA_FILE = "biomedseg.json"
#: oldest opset tried (ONNX Runtime releases of the last years all run it)
MIN_OPSET = 17


def output_names(has_head: bool) -> list[str]:
    return [LOGITS_NAME, HEAD_NAME] if has_head else [LOGITS_NAME]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom/right of ``(N, C, H, W)`` up to a multiple of ``multiple``."""
    h, w = x.shape[2], x.shape[3]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    return F.pad(x, [0, pw, 0, ph], mode="reflect")


class GraphNetwork(nn.Module):
    """``core`` (the bare network: its input must be a size multiple) with padding and cropping."""

    def __init__(self, core: nn.Module, multiple: int):
        super().__init__()
        self.core = core
        self.multiple = int(multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        y = self.core(pad_to_multiple(x, self.multiple))
        return y[:, :, :h, :w]


class GraphNetworkWithHead(GraphNetwork):
    """:class:`GraphNetwork` whose ``core`` returns ``(logits, image_logit (N, 1))``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        h, w = x.shape[2], x.shape[3]
        y, c = self.core(pad_to_multiple(x, self.multiple))
        return y[:, :, :h, :w], c


class _Core(nn.Module):
    """The bare network; with a classifier head also returns its ``(N, 1)`` logits of the same pass."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        y = self.net(x)
        head = find_classifier(self.net)
        return (y, head.class_logits[:, None]) if head is not None else y


def _parts(model: nn.Module) -> tuple[nn.Module, int, bool]:
    """``(bare network, size multiple, has a classifier head)`` of a registry model, in a
    float32 eval-mode copy on the CPU (the original is left as it is)."""
    from biomedseg.models.registry import PadToMultiple

    m = copy.deepcopy(model).float().cpu().eval()
    net, multiple = (m.net, m.multiple) if isinstance(m, PadToMultiple) else (m, 1)
    return net, multiple, find_classifier(net) is not None


def graph_network(model: nn.Module) -> tuple[GraphNetwork, int, bool]:
    """``(exportable network, size multiple, has head)`` for a run's model."""
    net, multiple, head = _parts(model)
    cls = GraphNetworkWithHead if head else GraphNetwork
    return cls(_Core(net), multiple).eval(), multiple, head


def example_input(channels: int, size: int, multiple: int) -> torch.Tensor:
    """A ``(2, C, s, s)`` tracing input, ``s`` = ``size`` rounded up to the size multiple, at least
    two multiples (the exporter specialises sizes of 1, e.g. a 1x1 bottleneck, to constants)."""
    s = max(-(-int(size) // multiple), 2) * multiple
    return torch.randn(2, channels, s, s, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def quiet_exporters():
    """Silence the exporters' progress lines and warnings (torch.onnx, onnxscript, the tracer)."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir", "torch._export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------- ONNX


def ort_max_opset() -> int:
    """Newest ONNX opset the installed ONNX Runtime runs (probed with a one-node model)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 - "opset not supported" comes as various ORT errors
            continue
    return MIN_OPSET


def choose_opset() -> int:
    """:data:`EXPORTER_OPSET`, or lower when the installed ONNX Runtime cannot run it."""
    return min(EXPORTER_OPSET, ort_max_opset())


def require(module: str, extra: str = "export") -> None:
    """A one-line UserError when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{module} is not installed: pip install 'biomedseg[{extra}]'")


def network_section(model: nn.Module, multiple: int, head: bool, **extra) -> dict:
    """The ``network`` section of the metadata document for a graph made here."""
    from biomedseg.models.registry import count_parameters

    return {
        "parameters": count_parameters(model),
        "input": INPUT_NAME,
        "outputs": output_names(head),
        "layout": "NCHW",
        "dtype": "float32",
        "dynamic_axes": ["batch", "height", "width"],
        "size_multiple": multiple,
        "min_size": multiple,
        "padding": "reflect (bottom/right) to a multiple of size_multiple inside the graph, output cropped back",
        "classifier_head": (
            "exported: output image_logit (N, 1), the 'contains foreground' logit of the same pass" if head else "none"
        ),
        **extra,
    }


def onnx_model(model: nn.Module, channels: int, size: int, opset: int | None = None):
    """``(ONNX ModelProto, network section)`` of the run's network (dynamic batch/height/width),
    traced at ``size`` (rounded up to the size multiple)."""
    require("onnx")
    require("onnxscript")
    net, multiple, head = graph_network(model)
    x = example_input(channels, size, multiple)
    dim = torch.export.Dim.DYNAMIC
    opset = opset or choose_opset()
    with quiet_exporters(), torch.no_grad():
        program = torch.export.export(net, (x,), dynamic_shapes={"x": {0: dim, 2: dim, 3: dim}}, strict=False)
        onnx_program = torch.onnx.export(
            program,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=output_names(head),
            opset_version=opset,
            verbose=False,
        )
    proto = onnx_program.model_proto
    proto.producer_name = "biomedseg"
    return proto, network_section(model, multiple, head, onnx_opset=opset)


def set_onnx_metadata(proto, metadata: str) -> None:
    """Store the metadata document under ``metadata_props["biomedseg"]``."""
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = metadata
            return
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata


def onnx_metadata(proto_or_path) -> str | None:
    """The metadata document stored in an ONNX model (``ModelProto`` or file), or ``None``."""
    import onnx

    proto = (
        proto_or_path
        if hasattr(proto_or_path, "metadata_props")
        else onnx.load(str(proto_or_path), load_external_data=False)
    )
    return next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)


# ---------------------------------------------------------------- TorchScript


def torchscript_module(model: nn.Module, channels: int, size: int) -> tuple[torch.jit.ScriptModule, dict]:
    """``(TorchScript module, network section)`` of the run's network: the bare network traced at
    one padded size, the padding and cropping scripted around it (dynamic batch/height/width)."""
    net, multiple, head = _parts(model)
    x = example_input(channels, size, multiple)
    with quiet_exporters(), torch.no_grad():
        core = torch.jit.trace(_Core(_traceable(net)), x, check_trace=False)
        wrapper = (GraphNetworkWithHead if head else GraphNetwork)(core, multiple).eval()
        module = torch.jit.script(wrapper)
    return module, network_section(model, multiple, head, torchscript=f"torch {torch.__version__}")


class _TraceableMaxUnpool2d(nn.Module):
    """:class:`torch.nn.MaxUnpool2d` for ``torch.jit.trace``: ``F.max_unpool2d(output_size=...)``
    (SegNet) checks the requested size with Python comparisons, which fail on the tracer's size
    values; the sizes come from the network's own pooling, so this module passes them to the
    unpooling kernel unchecked (the traced graph keeps them dynamic). It replaces the unpooling
    submodules of the export's own copy of the network, never a torch function (which another
    thread, e.g. one predicting, may be calling)."""

    def __init__(self, unpool: nn.MaxUnpool2d):
        super().__init__()
        pair = torch.nn.modules.utils._pair
        self.kernel_size, self.padding = pair(unpool.kernel_size), pair(unpool.padding)
        self.stride = pair(unpool.stride if unpool.stride is not None else unpool.kernel_size)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is None:
            size = [(x.shape[d - 2] - 1) * self.stride[d] + self.kernel_size[d] - 2 * self.padding[d] for d in (0, 1)]
        else:
            size = list(output_size)[-2:]
        return torch._C._nn.max_unpool2d(x, indices, size)


def _traceable(net: nn.Module) -> nn.Module:
    """``net`` (a copy owned by the exporter) with its ``MaxUnpool2d`` submodules made traceable."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.MaxUnpool2d):
                setattr(module, name, _TraceableMaxUnpool2d(child))
    return net


def save_torchscript(module: torch.jit.ScriptModule, path, metadata: str) -> None:
    """Write ``module`` with the metadata document as the extra file ``biomedseg.json``."""
    with warnings.catch_warnings():  # torch.jit is deprecated in PyTorch 2.13, still bioimage.io's format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(path), _extra_files={TORCHSCRIPT_EXTRA_FILE: metadata})


def load_torchscript(path, device: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, str | None]:
    """``(module, metadata document or None)`` of a TorchScript file."""
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(
                path if hasattr(path, "read") else str(path), map_location=torch.device(device), _extra_files=extra
            )
    except Exception as exc:  # noqa: BLE001 - a checkpoint or another file: torch says why
        raise UserError(f"{path}: not a TorchScript model ({str(exc).splitlines()[0][:160]})") from None
    text = extra[TORCHSCRIPT_EXTRA_FILE]
    return module.eval(), (text.decode() if isinstance(text, bytes) else text) or None
