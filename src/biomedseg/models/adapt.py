"""Carry a trained network's weights into the same architecture with other classes or input channels.

Which dimensions of which tensors are indexed by class (output layers, and any normalisation or
convolution after them) or by input channel (the first layer) is found by building the architecture
twice, with one class (or channel) more, and comparing the shapes of the state dicts: no knowledge
of a particular network is needed, so every registered architecture is covered.

- classes: ``class_map`` pairs ``(new index, source index)``; along every class dimension the kept
  classes take the source's values exactly (bit for bit), the others keep the fresh initialisation.
- channels: a one-channel source on C channels repeats its weights over the channels divided by C
  (an RGB image of a grey scene gives the grey response); a C-channel source on one channel sums them.
  Other changes (3 -> 4 channels) are refused.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from biomedseg.core.errors import UserError


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def varying_dims(build: Callable, channels: int, n_classes: int) -> tuple[dict, dict]:
    """``({key: class dims}, {key: channel dims})`` of the state dict of ``build(channels, n_classes)``."""
    base = _shapes(build(channels, n_classes))
    more_k, more_c = _shapes(build(channels, n_classes + 1)), _shapes(build(channels + 1, n_classes))

    def differing(other):
        return {k: [d for d, (a, b) in enumerate(zip(s, other[k])) if a != b] for k, s in base.items()}

    return differing(more_k), differing(more_c)


def match_classes(source: list[str], target: list[str]) -> list[tuple[int, int]]:
    """``[(target index, source index)]`` of the classes both name (case and spaces ignored)."""
    index = {name.strip().lower(): i for i, name in enumerate(source)}
    return [(j, index[n.strip().lower()]) for j, n in enumerate(target) if n.strip().lower() in index]


def _adapt_channels(t: np.ndarray, dim: int, c_src: int, c_new: int, where: str) -> np.ndarray:
    if c_src == 1:
        return np.repeat(t, c_new, axis=dim) / c_new
    if c_new == 1:
        return t.sum(axis=dim, keepdims=True)
    raise UserError(
        f"{where}: trained on {c_src} input channels; its first layer cannot take {c_new} "
        "(only grey <-> colour is adapted)"
    )


def _map_classes(src: np.ndarray, fresh: np.ndarray, dims: list[int], pairs) -> np.ndarray:
    out = fresh.copy()
    if not pairs:
        return out
    new_ix = [np.asarray([j for j, _ in pairs]) if d in dims else np.arange(n) for d, n in enumerate(fresh.shape)]
    src_ix = [np.asarray([s for _, s in pairs]) if d in dims else np.arange(n) for d, n in enumerate(src.shape)]
    out[np.ix_(*new_ix)] = src[np.ix_(*src_ix)]
    return out


def adapt_state_dict(
    src_state: dict, fresh_state: dict, dims: tuple[dict, dict], pairs, sizes: dict, where: str
) -> dict:
    """The state dict for the new network: ``src_state`` (the trained one) carried into the shapes of
    ``fresh_state`` (a new network's), class dims through ``pairs``, channel dims as the module says.
    ``dims``: :func:`varying_dims` of the new network; ``sizes``: ``{"classes": (source, new), "channels":
    (source, new)}``.
    Tensors whose shapes differ otherwise -> one-line :class:`UserError` naming ``where``."""
    import torch

    class_dims, channel_dims = dims
    channels = sizes["channels"]
    k_src, k_new = sizes["classes"]
    same_classes = k_src == k_new and list(pairs) == [(i, i) for i in range(k_new)]
    out = {}
    for key, fresh in fresh_state.items():
        if key not in src_state:
            raise UserError(f"{where}: the source network has no {key!r}; it is another architecture")
        src = src_state[key]
        if (
            tuple(src.shape) == tuple(fresh.shape)
            and (same_classes or not class_dims[key])
            and (channels[0] == channels[1] or not channel_dims[key])
        ):
            out[key] = src.clone()
            continue
        arr = src.detach().cpu().numpy()
        if channel_dims[key] and channels[0] != channels[1]:
            arr = _adapt_channels(arr, channel_dims[key][0], channels[0], channels[1], where).astype(arr.dtype)
        other = [d for d in range(arr.ndim) if d not in class_dims[key]]
        if arr.ndim != fresh.ndim or any(arr.shape[d] != fresh.shape[d] for d in other):
            raise UserError(
                f"{where}: {key} has shape {tuple(src.shape)} in the source and {tuple(fresh.shape)} "
                "here: another width or depth"
            )
        if class_dims[key]:
            arr = _map_classes(arr, fresh.detach().cpu().numpy(), class_dims[key], pairs)
        out[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(fresh.dtype)
    return out
