"""Globally pooled bottleneck features of one image, taken during the ordinary prediction pass.

A forward hook on the network's bottleneck keeps, for every tile the sliding-window predictor
runs (every TTA transform included), each bottleneck channel's mean and standard deviation over
its spatial positions (level and texture). The image's feature vector is the mean over its tiles, so memory is
``tiles x channels`` floats
whatever the image size, and no second forward pass is needed: :func:`predict_with_features`
returns the probabilities of :func:`~biomedseg.inference.predict.core.predict_proba_image` and
the features of that same pass.

Where the bottleneck is (:func:`bottleneck_sites`), through the registry's ``PadToMultiple``,
``ScaledNet``, classifier-head, ``torch.compile`` and DDP wrappers:

- MONAI ``UNet`` (the default ``unet``): the module found by
  :func:`biomedseg.models.heads.monai_unet_bottleneck` (its output);
- the project's encoder-decoder networks (:class:`~biomedseg.models.blocks.EncoderDecoder`) with a
  ``decoder`` module: the decoder's first input, which is the bottleneck; those whose decoder is a
  list of stages (SegNet): the output of the last encoder stage (before its final pooling);
- an ensemble (:class:`~biomedseg.engine.ensemble_model.EnsembleModel`): each member's, the
  vectors concatenated in member order.

Other networks have no known bottleneck: the features are ``None`` and callers fall back
(``ood``: the features part is skipped; ``suggest``: thumbnail descriptors).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

#: wrapper attributes followed to the bare network
_WRAPPER_ATTRS = ("module", "_orig_mod", "net")


def _bare(model: nn.Module) -> nn.Module:
    from biomedseg.models.blocks import EncoderDecoder

    m = model
    for _ in range(8):
        if isinstance(m, EncoderDecoder) or (
            hasattr(m, "channels") and isinstance(getattr(m, "model", None), nn.Sequential)
        ):
            return m
        inner = next((getattr(m, a) for a in _WRAPPER_ATTRS if isinstance(getattr(m, a, None), nn.Module)), None)
        if inner is None:
            return m
        m = inner
    return m


def bottleneck_sites(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``[(module, "output" | "input")]``: where each (member) network's bottleneck can be tapped;
    empty when the architecture's bottleneck is unknown."""
    from biomedseg.engine.ensemble_model import EnsembleModel
    from biomedseg.models.blocks import EncoderDecoder
    from biomedseg.models.heads import monai_unet_bottleneck

    inner = model
    for _ in range(4):  # an ensemble may sit inside compile/optimisation wrappers
        if isinstance(inner, EnsembleModel):
            return [site for member in inner.members for site in bottleneck_sites(member)]
        inner = next(
            (getattr(inner, a) for a in ("_orig_mod", "module") if isinstance(getattr(inner, a, None), nn.Module)), None
        )
        if inner is None:
            break
    net = _bare(model)
    if isinstance(net, EncoderDecoder):
        decoder, encoder = getattr(net, "decoder", None), getattr(net, "encoder", None)
        if isinstance(decoder, nn.Module) and not isinstance(decoder, (nn.ModuleList, nn.ModuleDict)):
            return [(decoder, "input")]
        if isinstance(encoder, (nn.ModuleList, nn.Sequential)) and len(encoder):  # e.g. SegNet: its last stage
            return [(encoder[-1], "output")]
        return []
    try:
        path, _ = monai_unet_bottleneck(net)
    except TypeError:
        return []
    return [(net.get_submodule(path), "output")]


#: attribute of a network that holds its persistent :class:`FeatureTap` (see :func:`tapped`)
_TAP_ATTR = "_biomedseg_feature_tap"


class FeatureTap:
    """Collects the pooled bottleneck of every forward pass through ``sites``: per tile and channel
    the mean and the standard deviation over the spatial positions, summed over the tiles into one
    tensor per site (with the tile count), so memory does not grow with the image.

    ``with FeatureTap(sites) as tap`` registers the hooks and removes them at exit. :func:`tapped`
    instead keeps one tap on the network for its lifetime and resets it per image: a compiled
    network (``torch.compile``) then sees the same hooks every time, and their in-place tensor
    sums are part of its graph (a hook that appended to a Python list made the compiled network
    recompile on every tile batch, then fall back to eager).
    """

    def __init__(self, sites: list[tuple[nn.Module, str]]):
        self.sites = sites
        self.sums: list[torch.Tensor | None] = [None for _ in sites]
        self.counts = [torch.zeros((), dtype=torch.float32) for _ in sites]
        self._handles = []

    def _hook(self, i: int, where: str):
        def keep(module, inputs, output=None):
            t = inputs[0] if where == "input" else output
            if isinstance(t, (tuple, list)):
                t = t[0]
            if isinstance(t, torch.Tensor) and t.dim() == 4:
                t = t.detach().float()
                pooled = torch.cat([t.mean(dim=(2, 3)), t.std(dim=(2, 3), correction=0)], 1).sum(dim=0)
                if self.sums[i] is None:
                    self.sums[i] = torch.zeros_like(pooled)
                    self.counts[i] = self.counts[i].to(pooled.device)
                self.sums[i].add_(pooled)
                self.counts[i].add_(t.shape[0])

        return keep

    def attach(self) -> FeatureTap:
        """Register the hooks (once)."""
        if not self._handles:
            for i, (module, where) in enumerate(self.sites):
                hook = self._hook(i, where)
                self._handles.append(
                    module.register_forward_pre_hook(hook) if where == "input" else module.register_forward_hook(hook)
                )
        return self

    def __enter__(self) -> FeatureTap:
        return self.attach()

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        """Forget what was collected (a new image): new zero tensors of the same shapes (those of
        the last image may be inference tensors, which cannot be zeroed in place outside
        ``torch.inference_mode``)."""
        self.sums = [None if s is None else torch.zeros_like(s) for s in self.sums]
        self.counts = [torch.zeros_like(c) for c in self.counts]

    def vector(self) -> np.ndarray | None:
        """``(D,) float32`` (``D = 2 x`` bottleneck channels per site: means, then standard
        deviations): per site the average over the tiles seen, concatenated; ``None`` if a site saw
        nothing."""
        if not self.sites or any(s is None or float(c) == 0 for s, c in zip(self.sums, self.counts)):
            return None
        return np.concatenate([(s / c).cpu().numpy() for s, c in zip(self.sums, self.counts)]).astype(np.float32)


@contextmanager
def tapped(predictor):
    """``with tapped(predictor) as tap: ...predict...; tap.vector()`` on the predictor's network:
    its persistent tap (registered at the first call, kept on the network), reset at the start of
    the block; read the vector before the network runs again."""
    model = predictor.model
    tap = model.__dict__.get(_TAP_ATTR)
    if tap is None:
        tap = model.__dict__[_TAP_ATTR] = FeatureTap(bottleneck_sites(model)).attach()
    tap.reset()
    yield tap


def predict_with_features(run, predictor, image: np.ndarray, pixel_size=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(H, W, C)`` raw image -> (``(K, H, W) float32`` probabilities, ``(D,)`` pooled bottleneck
    features or ``None``): :func:`~biomedseg.inference.predict.core.predict_proba_image` with the
    features of the same pass."""
    from biomedseg.inference.predict.core import predict_proba_image

    with tapped(predictor) as tap:
        proba = predict_proba_image(run, predictor, image, pixel_size)
    return proba, tap.vector()


def member_samples(run, predictor, image: np.ndarray) -> np.ndarray | None:
    """``(M, K, H, W) float32`` per-member probabilities of an ensemble run (``None`` for a single
    run): the members' blended logits of one pass, a softmax per member."""
    from biomedseg.engine.ensemble_model import EnsembleModel
    from biomedseg.io import conform_channels

    model = run.model
    if not isinstance(model, EnsembleModel):
        return None
    logits = predictor.predict_logits(run.normalizer(conform_channels(image, run.info.channels)))
    m, k = len(model.members), model.n_classes
    return torch.softmax(logits.float().reshape(m, k, *logits.shape[1:]), dim=1).numpy()
