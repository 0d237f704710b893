"""Optional image-level classifier head on the bottleneck of a segmentation network.

``create_model(name, ..., classifier_head=True)`` wraps the network in :class:`WithClassifier`:

- ``forward(x)`` returns the segmentation logits exactly as before (one encoder pass) and keeps
  the image-level logits of that same pass in ``.class_logits`` ``(N,)``;
- ``classify(x) -> (N,) logits`` runs the encoder only (any input size: global pooling).

The logit is "this image contains foreground" (train it with ``BCEWithLogitsLoss`` against
``(mask != background).any()`` per image). A typical training step::

    seg = model(x)                          # (N, K, H, W) or deep-supervision list
    cls = classifier_of(model).class_logits # (N,), same forward pass
    loss = seg_loss(seg, y) + 0.1 * F.binary_cross_entropy_with_logits(cls, has_fg.float())

and at inference ``classify(model, x)`` (or ``classifier_of(model).classify(x)``) e.g. to drop
predicted masks of images classified as empty. :func:`classifier_of` unwraps the registry's
``PadToMultiple``, ``DistributedDataParallel`` and ``torch.compile`` wrappers.

Networks without an encode/decode split (MONAI's ``UNet``, the default ``unet``) get the head
through :class:`TappedClassifier`: a forward hook on the bottleneck module keeps its output
during the one forward pass, and the head reads it afterwards. The hook is a module-level
function and the bottleneck is found by its path, so the wrapped model deep-copies
(``optimize_for_inference``), runs under DDP and keeps the state-dict keys
``net.<original key>`` and ``head.fc.*``.

Both wrappers derive from :class:`ClassifierModel`; :func:`find_classifier` returns it or
``None``, :func:`check_classifier_support` turns "this architecture cannot take a head" into a
one-line :class:`~biomedseg.core.errors.UserError`.
"""

from __future__ import annotations

import torch
from torch import nn

from biomedseg.models.blocks import EncoderDecoder


class ClassifierHead(nn.Module):
    """Global average + max pooling of the bottleneck, dropout, linear -> ``(N,)`` logits."""

    def __init__(self, in_channels: int, dropout: float = 0.2):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * in_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.fc(self.dropout(pooled)).squeeze(1)


class ClassifierModel(nn.Module):
    """Base of segmentation networks with an image-level head.

    ``forward(x (N, C, H, W) float32)`` returns the segmentation logits ``(N, K, H, W)`` (or the
    deep-supervision list) and sets ``self.class_logits`` to the ``(N,)`` image-level logits
    ("contains foreground") of the same pass.
    """

    class_logits: torch.Tensor | None

    def classify(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError


class WithClassifier(ClassifierModel):
    """Segmentation network + :class:`ClassifierHead` on its bottleneck (see module docstring)."""

    def __init__(self, net: EncoderDecoder, dropout: float = 0.2):
        super().__init__()
        if not isinstance(net, EncoderDecoder):
            raise TypeError(f"{type(net).__name__} has no encode/decode split; classifier_head is not supported")
        self.net = net
        self.head = ClassifierHead(net.bottleneck_channels, dropout)
        self.class_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor):
        bottleneck, context = self.net.encode(x)
        self.class_logits = self.head(bottleneck)
        return self.net.decode(bottleneck, context, x.shape[-2:])

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N,)`` image-level logits (encoder only)."""
        bottleneck, _ = self.net.encode(x)
        return self.head(bottleneck)


def _keep_output(module: nn.Module, inputs, output) -> None:
    """Forward hook of the tapped bottleneck: keep its output for :class:`TappedClassifier`."""
    module._classifier_tap = output


class TappedClassifier(ClassifierModel):
    """Any segmentation network + :class:`ClassifierHead` on the output of one inner module.

    Args:
        net: the network (``forward(x) -> logits``), left unchanged but for a forward hook on
            ``net.get_submodule(bottleneck_path)``.
        bottleneck_path: dotted path of the bottleneck module inside ``net``.
        bottleneck_channels: channels of that module's ``(N, C_b, h, w)`` output.
    """

    def __init__(self, net: nn.Module, bottleneck_path: str, bottleneck_channels: int, dropout: float = 0.2):
        super().__init__()
        self.net = net
        self.bottleneck_path = bottleneck_path
        self.head = ClassifierHead(int(bottleneck_channels), dropout)
        self.class_logits: torch.Tensor | None = None
        net.get_submodule(bottleneck_path).register_forward_hook(_keep_output)

    def forward(self, x: torch.Tensor):
        tapped = self.net.get_submodule(self.bottleneck_path)
        tapped._classifier_tap = None
        seg = self.net(x)
        features = tapped.__dict__.pop("_classifier_tap", None)
        if features is None:
            raise RuntimeError(f"the bottleneck {self.bottleneck_path!r} did not run in the forward pass")
        self.class_logits = self.head(features)
        return seg

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N,)`` image-level logits (runs the whole network, so ``H, W``
        must suit the bare network; :func:`classify` on the registry's model pads them)."""
        self.forward(x)
        return self.class_logits


def monai_unet_bottleneck(net: nn.Module) -> tuple[str, int]:
    """``(path, channels)`` of the bottom layer of a MONAI ``UNet``.

    MONAI nests the levels as ``Sequential(down, SkipConnection(submodule), up)``; the
    ``submodule`` of the deepest ``SkipConnection`` is the bottleneck, with ``net.channels[-1]``
    output channels.
    """
    from monai.networks.layers import SkipConnection

    path, m = "model", getattr(net, "model", None)
    found = False
    while isinstance(m, nn.Sequential):
        skip = next((i for i, child in enumerate(m) if isinstance(child, SkipConnection)), None)
        if skip is None:
            break
        path, m, found = f"{path}.{skip}.submodule", m[skip].submodule, True
    if not found or not hasattr(net, "channels"):
        raise TypeError(f"{type(net).__name__} is not a MONAI UNet; classifier_head is not supported")
    return path, int(net.channels[-1])


def monai_unet_with_classifier(net: nn.Module, dropout: float = 0.2) -> TappedClassifier:
    """MONAI ``UNet`` -> :class:`TappedClassifier` with the head on its bottleneck."""
    path, channels = monai_unet_bottleneck(net)
    return TappedClassifier(net, path, channels, dropout)


def maybe_with_classifier(net: EncoderDecoder, classifier_head: bool) -> nn.Module:
    """What the model factories return: ``net`` itself, or wrapped when ``classifier_head``."""
    return WithClassifier(net) if classifier_head else net


def find_classifier(model: nn.Module) -> ClassifierModel | None:
    """The :class:`ClassifierModel` inside ``model`` (through PadToMultiple, DDP and
    ``torch.compile`` wrappers), or ``None`` when the model has no head."""
    m = model
    for _ in range(6):
        if isinstance(m, ClassifierModel):
            return m
        inner = None
        for attr in ("module", "_orig_mod", "net"):
            inner = getattr(m, attr, None)
            if isinstance(inner, nn.Module):
                break
        if not isinstance(inner, nn.Module):
            return None
        m = inner
    return None


def classifier_of(model: nn.Module) -> ClassifierModel:
    """The :class:`ClassifierModel` inside ``model``; ``ValueError`` when there is none."""
    head = find_classifier(model)
    if head is None:
        raise ValueError("the model has no classifier head (create it with classifier_head=True)")
    return head


def supports_classifier_head(model_name: str) -> bool:
    """Whether the registered factory of ``model_name`` takes ``classifier_head``."""
    import inspect

    from biomedseg.models.registry import get_entry

    params = inspect.signature(get_entry(model_name).factory).parameters
    return "classifier_head" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_classifier_support(model_name: str) -> None:
    """Raise a one-line UserError when ``model_name`` cannot take a classifier head."""
    from biomedseg.core.errors import UserError
    from biomedseg.models.registry import list_models

    if not supports_classifier_head(model_name):
        able = [n for n in list_models() if supports_classifier_head(n)]
        raise UserError(
            f"model {model_name!r} cannot take a classifier head (--classifier-head); "
            f"models that can: {', '.join(able)}"
        )


def foreground_present(target: torch.Tensor, background: int | None) -> torch.Tensor:
    """``(N, H, W)`` integer masks -> ``(N,) float32`` 1.0 where any pixel is foreground.

    Foreground = class ``!= background``; with ``background=None`` any class ``!= 0``; unlabelled
    pixels (:data:`~biomedseg.core.labels.IGNORE_INDEX`) are not foreground. This is
    the target of the head's ``BCEWithLogits`` loss.
    """
    from biomedseg.core.labels import IGNORE_INDEX

    bg = 0 if background is None else int(background)
    return ((target != bg) & (target != IGNORE_INDEX)).flatten(1).any(dim=1).float()


def classify(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Image-level logits ``(N,)`` of a model created with ``classifier_head=True``.

    :class:`WithClassifier` runs its encoder only; a :class:`TappedClassifier` needs the whole
    forward pass, run through ``model`` itself so that its input padding applies."""
    head = classifier_of(model)
    if isinstance(head, TappedClassifier):
        model(x)
        return head.class_logits
    return head.classify(x)
