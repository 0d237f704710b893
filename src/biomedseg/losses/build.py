"""Loss functions by spec string.

A spec is a sum of weighted terms: ``"dice+ce"``, ``"0.5*focal+dice"``,
``"tversky:alpha=0.3,beta=0.7"``. Every loss takes logits ``(N, K, H, W) float`` and an index
target ``(N, H, W) int64`` and returns a scalar. MONAI's implementations are used where they
exist; each term is computed in float32 even under autocast. Registered here: ``ce``, ``dice``,
``focal``; :mod:`biomedseg.losses.extra` adds ``bce``, ``jaccard``, ``tversky``, ``fbeta`` and
``lovasz``. The registry (:func:`register_loss`) and the shared adapters live in
:mod:`biomedseg.losses.registry`, which both modules import.
"""

from __future__ import annotations

import re

import torch
from torch import nn

import biomedseg.losses.extra  # noqa: F401  (registers bce, jaccard, tversky, fbeta, lovasz)
from biomedseg.core.errors import UserError
from biomedseg.core.labels import IGNORE_INDEX
from biomedseg.losses.registry import _LOSSES, _as_bool, _OneHotLoss, list_losses, register_loss


class CrossEntropy(nn.Module):
    def __init__(self, class_weights: torch.Tensor | None = None, ignore_index: int = -100):
        super().__init__()
        self.register_buffer("weight", class_weights.float() if class_weights is not None else None)
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        return nn.functional.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore_index)


@register_loss("ce")
def _ce(n_classes, class_weights=None):
    return CrossEntropy(class_weights)


@register_loss("dice")
def _dice(n_classes, class_weights=None, include_background: str | bool = True, smooth: float = 1e-5):
    from monai.losses import DiceLoss

    return _OneHotLoss(
        DiceLoss(
            include_background=_as_bool(include_background),
            to_onehot_y=True,
            softmax=True,
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=True,
        )
    )


class _SumOverClasses(nn.Module):
    """Per-class elementwise loss ``(N, K, H, W)`` -> sum over classes, mean over pixels."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, logits, target):
        return self.inner(logits, target).sum(dim=1).mean()


@register_loss("focal")
def _focal(n_classes, class_weights=None, gamma: float = 2.0, alpha: float | None = None):
    """Softmax focal loss (Lin et al. 2017), ``-mean_pixels (1 - p_t)^gamma log p_t``.

    MONAI's ``reduction="mean"`` also averages over the K classes (giving CE / K at gamma=0);
    summing over classes instead makes ``focal:gamma=0`` equal to ``ce``.
    """
    from monai.losses import FocalLoss

    kw = {"gamma": float(gamma), "use_softmax": True, "to_onehot_y": True, "reduction": "none"}
    if alpha is not None:
        kw["alpha"] = float(alpha)
    if class_weights is not None:
        kw["weight"] = class_weights.float()
    return _OneHotLoss(_SumOverClasses(FocalLoss(**kw)))


class LabelledPixels(nn.Module):
    """Any loss restricted to the labelled pixels of the batch.

    Pixels whose target is :data:`~biomedseg.core.labels.IGNORE_INDEX` are dropped before the
    loss sees them: the labelled pixels of the batch are gathered into one ``(1, K, 1, P)`` row. Every
    loss here pools over the batch's pixels (pixel-wise terms average them, region terms sum them with
    ``batch=True``), so this is exactly the loss over the labelled pixels; a batch without unlabelled
    pixels is passed through untouched. A batch with no labelled pixel gives 0 (with a gradient).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, logits, target):
        labelled = target != IGNORE_INDEX
        if bool(labelled.all()):
            return self.inner(logits, target)
        if not bool(labelled.any()):
            return logits.sum() * 0.0
        k = logits.shape[1]
        picked = logits.movedim(1, -1)[labelled]  # (P, K)
        return self.inner(picked.t().reshape(1, k, 1, -1), target[labelled].reshape(1, 1, -1))


class WeightedSum(nn.Module):
    """``sum_i w_i * loss_i(logits, target)``."""

    def __init__(self, terms: list[tuple[float, str, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _, _ in terms]
        self.names = [n for _, n, _ in terms]
        self.terms = nn.ModuleList([m for _, _, m in terms])

    def forward(self, logits, target):
        total = 0.0
        for w, term in zip(self.weights, self.terms):
            total = total + w * term(logits, target)
        return total


_TERM = re.compile(r"^\s*(?:(?P<w>[0-9.eE+-]+)\s*\*\s*)?(?P<name>[a-z_]+)\s*(?::(?P<params>.*))?$")


def parse_spec(spec: str) -> list[tuple[float, str, dict[str, str]]]:
    """Split ``"0.5*focal:gamma=3+dice"`` into ``[(0.5, 'focal', {'gamma': '3'}), (1.0, 'dice', {})]``."""
    terms = []
    for part in re.split(r"\+(?![^:]*=[^+]*$)(?=\s*[0-9.]*\s*\*?\s*[a-z])", spec):
        m = _TERM.match(part)
        if not m:
            raise UserError(f"loss spec {spec!r}: cannot parse term {part!r}")
        params = {}
        if m.group("params"):
            for kv in m.group("params").split(","):
                if "=" not in kv:
                    raise UserError(f"loss spec {spec!r}: parameter {kv!r} is not key=value")
                k, v = kv.split("=", 1)
                params[k.strip()] = v.strip()
        terms.append((float(m.group("w") or 1.0), m.group("name"), params))
    return terms


def _convert(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def build_loss(spec: str, n_classes: int, class_weights: torch.Tensor | None = None) -> nn.Module:
    """Build the loss described by ``spec`` (see module docstring).

    ``class_weights``: ``(K,) float32`` used by the terms that accept weights (ce, focal). Unlabelled
    target pixels (:data:`~biomedseg.core.labels.IGNORE_INDEX`) count in no term (:class:`LabelledPixels`).
    """
    terms = []
    for weight, name, params in parse_spec(spec):
        if name not in _LOSSES:
            raise UserError(f"unknown loss {name!r} in {spec!r}; choose from: {', '.join(list_losses())}")
        kwargs = {k: _convert(v) for k, v in params.items()}
        try:
            module = _LOSSES[name](n_classes, class_weights=class_weights, **kwargs)
        except TypeError as exc:
            raise UserError(f"loss {name!r}: {exc}") from None
        terms.append((weight, name, module))
    return LabelledPixels(WeightedSum(terms))


def class_weights_from_counts(counts, mode: str) -> torch.Tensor | None:
    """Class weights from per-class pixel counts ``(K,)``.

    ``none`` -> None; ``inverse`` -> ``1 - f_c`` (f = pixel share; the common "inverse
    frequency" of segmentation tutorials), rescaled to mean 1; ``median`` -> median frequency
    balancing ``median(f) / f_c`` (Eigen & Fergus 2015), classes absent get weight 0 to 1 cap;
    a comma-separated list of numbers is taken literally.
    """
    import numpy as np

    counts = np.asarray(counts, dtype=np.float64)
    if mode in (None, "", "none"):
        return None
    freq = counts / max(counts.sum(), 1.0)
    if mode == "inverse":
        w = 1.0 - freq
    elif mode == "median":
        present = freq > 0
        med = np.median(freq[present]) if present.any() else 1.0
        w = np.where(present, med / np.maximum(freq, 1e-12), 0.0)
        w = np.minimum(w, 100.0)
    else:
        try:
            w = np.array([float(x) for x in str(mode).split(",")])
        except ValueError:
            raise UserError(f"class weights {mode!r}: expected none, inverse, median or a list of numbers") from None
        if len(w) != len(counts):
            raise UserError(f"class weights {mode!r}: {len(w)} values for {len(counts)} classes")
        return torch.tensor(w, dtype=torch.float32)
    w = w / max(w[w > 0].mean(), 1e-12)
    return torch.tensor(w, dtype=torch.float32)
