"""A network run at a working scale: native tiles in, native-size logits out.

A run planned at working scale ``s < 1`` (``TrainConfig.working_scale``) trains on images shrunk
by ``s``. At validation and prediction, :func:`at_scale` wraps its network so that it takes
*native-resolution* tiles of :func:`native_tile` pixels, shrinks them (anti-aliased, as the
training images were: :func:`biomedseg.transforms.resample.resize_tensor`), runs the network and
resamples its soft scores back to the tile's native size before anything takes an argmax. So the
sliding window, TTA, streaming, metrics, post-processing, exports and outputs all stay at the
native resolution.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn

from biomedseg.transforms.resample import resize_tensor


def native_tile(patch_size: int, scale: float) -> int:
    """Side in native pixels of a tile that becomes a ``patch_size`` patch at ``scale``."""
    return int(patch_size) if scale >= 1 else int(round(patch_size / scale))


class ScaledNet(nn.Module):
    """``net`` applied at ``scale``: ``(N, C, H, W)`` -> logits ``(N, K, H, W)`` at the input's size.

    The input is shrunk to ``round(H * scale), round(W * scale)`` (a multiple of ``multiple``),
    the logits are resized back bilinearly. Networks returning a tuple (deep supervision,
    image-level heads) have their first output resized and the others passed through.
    """

    def __init__(self, net: nn.Module, scale: float, multiple: int = 16):
        super().__init__()
        self.net = net
        ratio = Fraction(float(scale)).limit_denominator(10_000)
        self.scale = float(scale)
        self.num, self.den = int(ratio.numerator), int(ratio.denominator)
        self.multiple = int(multiple)

    def inner_size(self, h, w):
        """``(H, W)`` -> the network's input size: ``round(H * scale)`` to a multiple of ``multiple``
        (integer arithmetic only, so traced and exported graphs keep the size dynamic; inputs are
        expected to be at least ``multiple / scale`` pixels, as sliding-window tiles are)."""
        q = 2 * self.den * self.multiple
        return (
            (2 * h * self.num + self.den * self.multiple) // q * self.multiple,
            (2 * w * self.num + self.den * self.multiple) // q * self.multiple,
        )

    def forward(self, x: torch.Tensor):
        h, w = x.shape[-2], x.shape[-1]
        out = self.net(resize_tensor(x, self.inner_size(h, w)))
        if isinstance(out, (tuple, list)):
            return (resize_tensor(out[0].float(), (h, w)), *out[1:])
        return resize_tensor(out.float(), (h, w))


def at_scale(net: nn.Module, scale: float | None) -> nn.Module:
    """``net`` itself at scale 1 (or ``None``), else a :class:`ScaledNet`."""
    if scale is None or scale >= 1:
        return net
    return ScaledNet(net, scale)


def logits_at_pixel_size(predictor, image, factor: tuple[float, float] | None) -> torch.Tensor:
    """``predictor.predict_logits`` of a ``(C, H, W)`` normalised image whose pixels are ``factor``
    ``(y, x)`` times the training data's (:func:`biomedseg.io.pixel_size.pixel_size_factor`): the
    image is resampled to the training pixel size first and the logits come back to ``(H, W)``."""
    if factor is None:
        return predictor.predict_logits(image)
    x = torch.as_tensor(image, dtype=torch.float32)[None]
    h, w = x.shape[-2:]
    size = (max(1, int(round(h * factor[0]))), max(1, int(round(w * factor[1]))))
    logits = predictor.predict_logits(resize_tensor(x, size)[0])
    return resize_tensor(logits[None].float(), (h, w))[0]
