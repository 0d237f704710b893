"""ImageNet-pretrained encoder weights: local files or a checked, cached download.

``pretrained`` (a model keyword) is either

- a path to a ``.pth`` state dict with **torchvision key names** (``features.0.weight`` for VGG,
  ``conv1.weight`` / ``layer1.0.conv1.weight`` for ResNet); checkpoints wrapping it in
  ``state_dict`` / ``model`` and ``module.`` prefixes are accepted; or
- ``"imagenet"``: the torchvision file is downloaded once into the cache folder
  (``$BIOMEDSEG_CACHE``, default ``~/.cache/biomedseg``) and its SHA-256 checked.

Everything is loaded with ``torch.load(..., weights_only=True)``. The classifier layers of the
file (``classifier.*``, ``fc.*``) are dropped. When the network has a different number of input
channels than the file's 3 (RGB), the first convolution is adapted: for 1 channel the RGB
kernels are summed (a grey image replicated to RGB gives the same response), for other counts
the mean kernel is repeated and scaled by ``3 / in_channels``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch
from torch import nn

from biomedseg.core.errors import UserError

#: torchvision's ImageNet weights: name -> (url, SHA-256 or its leading hex digits).
#: torchvision names its files ``<arch>-<first 8 hex digits of the SHA-256>.pth``; only that
#: prefix is recorded here (it is checked); replace by the full digest to pin the file exactly.
PRETRAINED_URLS: dict[str, tuple[str, str]] = {
    "vgg16": ("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
    "vgg16_bn": ("https://download.pytorch.org/models/vgg16_bn-6c64b313.pth", "6c64b313"),
    "resnet34": ("https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593"),
    "resnet50": ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61"),
}


def cache_dir() -> Path:
    """Folder of downloaded weights: ``$BIOMEDSEG_CACHE`` or ``~/.cache/biomedseg``."""
    return Path(os.environ.get("BIOMEDSEG_CACHE") or Path.home() / ".cache" / "biomedseg").expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_digest(actual: str, expected: str) -> bool:
    expected = expected.lower().strip()
    return len(expected) >= 8 and actual.startswith(expected)


def download_weights(url: str, sha256: str, folder: Path | None = None, filename: str | None = None,
                     timeout: float = 60.0) -> Path:
    """Download ``url`` into ``folder`` (default :func:`cache_dir`) unless already there.

    ``sha256``: the full hex digest or (at least 8 of) its leading digits. The file is written to
    a temporary name and renamed only when the checksum matches; a mismatch or a network error
    raises :class:`UserError`. A cached file is re-checked before use.
    """
    folder = Path(folder) if folder is not None else cache_dir()
    target = folder / (filename or url.rstrip("/").rsplit("/", 1)[-1])
    if target.is_file():
        if _check_digest(sha256_of(target), sha256):
            return target
        target.unlink()  # damaged or replaced: fetch again
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".part{os.getpid()}")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{url}: download failed ({exc}); download it by hand and pass "
                        f"pretrained=/path/to/file.pth") from None
    digest = h.hexdigest()
    if not _check_digest(digest, sha256):
        tmp.unlink(missing_ok=True)
        raise UserError(f"{url}: SHA-256 mismatch (expected {sha256}..., got {digest}); the file was not kept")
    os.replace(tmp, target)
    return target


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` file (``weights_only=True``), unwrapped and de-``module.``-ed."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: pretrained weights file not found")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused / corrupt file
        raise UserError(f"{p}: cannot read pretrained weights ({str(exc).splitlines()[0]})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{p}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB kernels ``(O, 3, kh, kw)`` -> ``(O, in_channels, kh, kw)`` (see module docstring)."""
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (c / in_channels)


def torchvision_to_encoder(sd: dict[str, torch.Tensor], keep_prefixes: tuple[str, ...],
                           first_conv: str, in_channels: int) -> dict[str, torch.Tensor]:
    """Key mapping torchvision -> our encoder: keep the feature layers (``keep_prefixes``, e.g.
    ``features.`` or ``conv1. bn1. layer1. ...``), drop the classifier, adapt the first conv.

    Our encoders use torchvision's layer layout, so the kept names are the encoder's own.
    Files saved from a biomedseg network (``encoder.``-prefixed keys) are accepted as well.
    """
    out = {}
    for key, value in sd.items():
        if key.startswith("encoder."):
            key = key[len("encoder."):]
        if key.startswith(keep_prefixes):
            out[key] = value
    if first_conv in out:
        out[first_conv] = adapt_first_conv(out[first_conv], in_channels)
    return out


def load_encoder_weights(encoder: nn.Module, pretrained: str, arch: str, keep_prefixes: tuple[str, ...],
                         first_conv: str, in_channels: int) -> None:
    """Load ``pretrained`` (``"imagenet"`` or a file path) into ``encoder`` (strict on its keys)."""
    if pretrained == "imagenet":
        url, digest = PRETRAINED_URLS[arch]
        path = download_weights(url, digest)
    else:
        path = Path(pretrained)
    mapped = torchvision_to_encoder(read_state_dict(path), keep_prefixes, first_conv, in_channels)
    own = encoder.state_dict()
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in own]
    wrong = [f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in mapped and mapped[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        raise UserError(f"{path}: does not fit the {arch} encoder ({', '.join(parts)}); pretrained weights need "
                        f"the default width (64) and matching batch_norm")
    encoder.load_state_dict(mapped, strict=False)
