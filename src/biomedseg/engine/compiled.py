"""A ``torch.compile``-d inference network with one input shape and an eager fallback.

:class:`CompiledForward` wraps the eval-mode network that the predictors run: it compiles it with
inductor (static shapes), pads every batch smaller than the compiled batch size (the last batch
of an image, TTA batches of a short band) with copies of its last tile so that one graph serves
the whole prediction, and drops the padding from the outputs. If compiling or running the
compiled graph fails (no working C++ compiler, an operator inductor cannot lower), it logs one
warning and predicts with the eager network from then on; an error the eager network raises too
is a real one and propagates.

Compiling costs time up front (about a minute for the 6.5 M-parameter U-Net on 2 CPU cores, a few
seconds when inductor's on-disk cache already holds the kernels), so :func:`resolve_compile`
decides ``auto`` by the number of tile forwards the job will run (``COMPILE_MIN_TILES``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from biomedseg.core.errors import UserError
from biomedseg.engine.defaults import COMPILE_MIN_TILES, COMPILE_MODES
from biomedseg.models.heads import find_classifier

log = logging.getLogger("biomedseg")


def compile_reason(err: BaseException) -> str:
    """``"Type: first line"`` of the innermost cause of a ``torch.compile`` error."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "inner_exception", None) or err.__cause__
        if not isinstance(inner, BaseException):
            break
        err = inner
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


class CompiledForward(nn.Module):
    """``model`` compiled for inference at a fixed batch size, eager if compiling fails.

    Args:
        model: the eval-mode network (``(N, C, h, w)`` -> ``(N, K, h, w)`` logits).
        batch_size: batches with fewer tiles are padded to this size (one compiled graph);
            ``None``: each batch size compiles its own graph.
        backend: ``True`` (inductor) or a ``torch.compile`` backend name.

    Inductor's ``freezing`` (weights folded into the graph as constants) was measured and not
    adopted: it made no difference beyond noise on a 2-core AMD EPYC (bf16 +2%, fp32 -3%).

    ``_orig_mod`` is the eager network (the attribute ``torch.compile`` uses), so
    :func:`~biomedseg.models.heads.find_classifier` and ``plain_module`` see through the wrapper.
    """

    def __init__(self, model: nn.Module, batch_size: int | None = None, backend: bool | str = True):
        super().__init__()
        self._orig_mod = model
        self.batch_size = batch_size
        kw = {"dynamic": False} if backend is True else {"dynamic": False, "backend": backend}
        # not a submodule: the compiled wrapper holds the same parameters
        object.__setattr__(self, "compiled", torch.compile(model, **kw))
        self.head = find_classifier(model)

    @property
    def active(self) -> bool:
        """``True`` while the compiled graph is used (``False`` after a fallback)."""
        return self.compiled is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self._orig_mod(x)
        n = x.shape[0]
        if self.batch_size and n < self.batch_size:  # one graph: pad with copies of the last tile
            x = torch.cat([x, x[-1:].expand(self.batch_size - n, *x.shape[1:])])
        try:
            y = self.compiled(x)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the eager call re-raises real errors
            y = self._orig_mod(x)
            log.warning("torch.compile failed (%s); predicting without it", compile_reason(err))
            object.__setattr__(self, "compiled", None)
        if y.shape[0] != n:
            y = y[:n]
            if self.head is not None and self.head.class_logits is not None:
                self.head.class_logits = self.head.class_logits[:n]
        return y


def normalize_compile(mode) -> str | bool:
    """``--compile`` value -> ``"auto"``, ``True``, ``False`` or a backend name (tests, GPUs)."""
    if mode is None or isinstance(mode, bool):
        return "auto" if mode is None else mode
    key = str(mode).strip().lower()
    aliases = {
        "auto": "auto",
        "on": True,
        "true": True,
        "yes": True,
        "inductor": True,
        "off": False,
        "false": False,
        "no": False,
    }
    if key in aliases:
        return aliases[key]
    from torch._dynamo import list_backends

    if key in list_backends(exclude_tags=()):
        return key
    raise UserError(f"--compile {mode!r}: choose one of {', '.join(COMPILE_MODES)}")


def resolve_compile(mode, n_forwards: int, device: torch.device | str = "cpu") -> bool | str:
    """Whether to compile the inference network: ``on``/``off``/a backend as given; ``auto``
    compiles on a CPU with a C++ compiler when the job runs at least ``COMPILE_MIN_TILES`` tile
    forwards (tiles x TTA transforms, over all inputs); not on GPUs (not measured yet)."""
    from biomedseg.runtime.device import cpp_compiler_available

    mode = normalize_compile(mode)
    if mode != "auto":
        return mode
    if torch.device(device).type != "cpu" or n_forwards < COMPILE_MIN_TILES:
        return False
    return cpp_compiler_available()
