"""More losses for :func:`biomedseg.losses.build.build_loss` (imported by ``losses/build.py``, which builds them).

All take logits ``(N, K, H, W)`` and an index target ``(N, H, W) int64`` and return a scalar,
computed in float32. Region losses (jaccard, tversky, fbeta) pool the counts over the whole
batch (like ``dice``) and average over classes; ``include_background=false`` drops class 0.

============  ==========================================================================
``bce``       binary cross-entropy. K=2: on the logit difference ``z1 - z0`` (the sigmoid of
              which is the softmax foreground probability); K=1: on the single logit;
              K>2: one-vs-rest per class. ``pos_weight`` optional; class weights apply
              per pixel (K<=2).
``jaccard``   soft Jaccard / IoU loss (MONAI ``DiceLoss(jaccard=True)``).
``tversky``   Tversky loss, ``alpha`` weighs false positives, ``beta`` false negatives
              (MONAI ``TverskyLoss``); alpha = beta = 0.5 is the Dice loss.
``fbeta``     ``1 - soft F_beta``; ``beta > 1`` favours recall (``beta=2`` default). Equal to
              Tversky with ``alpha = 1/(1+beta^2)``, ``beta_T = beta^2/(1+beta^2)``.
``lovasz``    Lovasz-softmax (Berman et al. 2018): convex surrogate of the Jaccard index,
              averaged over the classes present in the batch (``classes=all`` for all).
============  ==========================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biomedseg.losses.registry import _as_bool, _OneHotLoss, register_loss


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; a single channel is a sigmoid foreground -> 2 channels."""
    logits = logits.float()
    if logits.shape[1] == 1:
        fg = torch.sigmoid(logits)
        return torch.cat([1.0 - fg, fg], dim=1)
    return torch.softmax(logits, dim=1)


def _one_hot(target: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, H, W)`` indices -> ``(N, K, H, W)`` float."""
    return F.one_hot(target.long().clamp(0, k - 1), k).permute(0, 3, 1, 2).float()


class BinaryCrossEntropy(nn.Module):
    def __init__(self, class_weights: torch.Tensor | None = None, pos_weight: float | None = None):
        super().__init__()
        self.register_buffer("weight", class_weights.float() if class_weights is not None else None)
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)) if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        k = logits.shape[1]
        if k > 2:  # multi-class: one-vs-rest on every channel
            return F.binary_cross_entropy_with_logits(logits, _one_hot(target, k), pos_weight=self._pw(k))
        z = logits[:, 0] if k == 1 else logits[:, 1] - logits[:, 0]
        t = (target == 1).float()
        w = self.weight[target.long().clamp(0, len(self.weight) - 1)] if self.weight is not None else None
        return F.binary_cross_entropy_with_logits(z, t, weight=w, pos_weight=self.pos_weight)

    def _pw(self, k: int):
        return None if self.pos_weight is None else self.pos_weight.expand(k)[None, :, None, None]


@register_loss("bce")
def _bce(n_classes, class_weights=None, pos_weight: float | None = None):
    return BinaryCrossEntropy(class_weights if n_classes <= 2 else None, pos_weight)


@register_loss("jaccard")
def _jaccard(n_classes, class_weights=None, include_background: str | bool = True, smooth: float = 1e-5):
    from monai.losses import DiceLoss

    return _OneHotLoss(
        DiceLoss(
            include_background=_as_bool(include_background),
            to_onehot_y=True,
            softmax=True,
            jaccard=True,
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=True,
        )
    )


@register_loss("tversky")
def _tversky(
    n_classes,
    class_weights=None,
    alpha: float = 0.3,
    beta: float = 0.7,
    include_background: str | bool = True,
    smooth: float = 1e-5,
):
    from monai.losses import TverskyLoss

    return _OneHotLoss(
        TverskyLoss(
            include_background=_as_bool(include_background),
            to_onehot_y=True,
            softmax=True,
            alpha=float(alpha),
            beta=float(beta),
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=True,
        )
    )


class SoftFBeta(nn.Module):
    """``1 - mean_c F_beta(c)`` with soft counts ``tp = sum p g``, ``fp = sum p (1-g)``,
    ``fn = sum (1-p) g`` pooled over the batch."""

    def __init__(self, beta: float = 2.0, include_background: bool = True, smooth: float = 1e-5):
        super().__init__()
        self.b2 = float(beta) ** 2
        self.include_background = include_background
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = _probabilities(logits)
        g = _one_hot(target, p.shape[1])
        dims = (0, 2, 3)
        tp = (p * g).sum(dims)
        fp = (p * (1 - g)).sum(dims)
        fn = ((1 - p) * g).sum(dims)
        f = ((1 + self.b2) * tp + self.smooth) / ((1 + self.b2) * tp + self.b2 * fn + fp + self.smooth)
        if not self.include_background and f.numel() > 1:
            f = f[1:]
        return 1.0 - f.mean()


@register_loss("fbeta")
def _fbeta(
    n_classes, class_weights=None, beta: float = 2.0, include_background: str | bool = True, smooth: float = 1e-5
):
    return SoftFBeta(beta, _as_bool(include_background), smooth)


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted decreasingly.

    ``gt_sorted``: ``(P,)`` 0/1 ground truth in that order. Entry i is
    ``J(first i+1 pixels wrong) - J(first i pixels wrong)`` with ``J = 1 - |gt & pred| / |gt | pred|``.
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


class LovaszSoftmax(nn.Module):
    """Lovasz-softmax loss over all pixels of the batch (Berman, Triki & Blaschko, CVPR 2018)."""

    def __init__(self, classes: str = "present", include_background: bool = True):
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError("classes must be 'present' or 'all'")
        self.classes = classes
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = _probabilities(logits)
        k = p.shape[1]
        p = p.permute(0, 2, 3, 1).reshape(-1, k)
        t = target.reshape(-1)
        losses = []
        for c in range(0 if self.include_background else 1, k):
            fg = (t == c).float()
            if self.classes == "present" and not bool(fg.any()):
                continue
            errors = (fg - p[:, c]).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
        if not losses:
            return p.sum() * 0.0
        return torch.stack(losses).mean()


@register_loss("lovasz")
def _lovasz(n_classes, class_weights=None, classes: str = "present", include_background: str | bool = True):
    return LovaszSoftmax(str(classes), _as_bool(include_background))
