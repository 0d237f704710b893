"""ImageNet-pretrained encoder weights: local files or a checked, cached download.

``pretrained`` (a model keyword) is either

- a path to a ``.pth`` state dict with **torchvision key names** (``features.0.weight`` for VGG,
  ``conv1.weight`` / ``layer1.0.conv1.weight`` for ResNet); checkpoints wrapping it in
  ``state_dict`` / ``model`` and ``module.`` prefixes are accepted; or
- ``"imagenet"``: the torchvision file is downloaded once into the cache folder
  (``$BIOMEDSEG_CACHE``, default ``~/.cache/biomedseg``) by ``torch.hub.load_state_dict_from_url``
  with ``check_hash=True``.

**What the download check checks.** torchvision names its files ``<arch>-<hex>.pth`` where
``<hex>`` is the first 8 hex digits of the file's SHA-256; torch.hub compares the downloaded
file's SHA-256 with that prefix (32 bits). That catches a truncated, damaged or wrong file, not
a file crafted to match the prefix. To pin a file exactly, download it by hand, check its full
SHA-256 and pass its path. A cached file is re-checked against the prefix before use.

Everything is loaded with ``weights_only=True``. The classifier layers of the
file (``classifier.*``, ``fc.*``) are dropped. When the network has a different number of input
channels than the file's 3 (RGB), the first convolution is adapted: for 1 channel the RGB
kernels are summed (a grey image replicated to RGB gives the same response), for other counts
the mean kernel is repeated and scaled by ``3 / in_channels``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path

import torch
from torch import nn

from biomedseg.core.errors import UserError

#: torchvision's ImageNet weights: name -> url; the file name carries the SHA-256 prefix checked
PRETRAINED_URLS: dict[str, str] = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
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


def hash_prefix(url: str) -> str:
    """The SHA-256 prefix in ``url``'s file name (torch.hub's ``<name>-<hex>.<ext>`` convention);
    :class:`UserError` when it has none of at least 8 digits (the download could not be checked)."""
    match = torch.hub.HASH_REGEX.search(url.rstrip("/").rsplit("/", 1)[-1])
    if not match or len(match.group(1)) < 8:
        raise UserError(
            f"{url}: the file name carries no SHA-256 prefix (<name>-<8+ hex digits>.pth), so a "
            f"download could not be checked; download it by hand and pass pretrained=/path/to/file.pth"
        )
    return match.group(1)


def download_state_dict(url: str, folder: Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict at ``url``, downloaded into ``folder`` (default :func:`cache_dir`) unless cached.

    ``torch.hub.load_state_dict_from_url(..., check_hash=True, weights_only=True)``: the file is
    kept only when its SHA-256 starts with :func:`hash_prefix` of ``url`` (see the module text); a
    mismatch or a network error raises :class:`UserError`.
    """
    folder = Path(folder) if folder is not None else cache_dir()
    prefix = hash_prefix(url)
    cached = folder / url.rstrip("/").rsplit("/", 1)[-1]
    if cached.is_file() and not sha256_of(cached).startswith(prefix):
        cached.unlink()  # damaged or replaced: fetch again
    try:
        sd = torch.hub.load_state_dict_from_url(
            url, model_dir=str(folder), map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise UserError(f"{cached}: cannot read pretrained weights ({str(exc).splitlines()[0]})") from None
        raise UserError(f"{url}: SHA-256 mismatch ({exc}); the file was not kept") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UserError(
            f"{url}: download failed ({exc}); download it by hand and pass pretrained=/path/to/file.pth"
        ) from None
    return _unwrap(sd, url)


def _unwrap(sd, source) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{source}: not a state dict of tensors")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` file (``weights_only=True``), unwrapped and de-``module.``-ed."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: pretrained weights file not found")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused / corrupt file
        raise UserError(f"{p}: cannot read pretrained weights ({str(exc).splitlines()[0]})") from None
    return _unwrap(sd, p)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB kernels ``(O, 3, kh, kw)`` -> ``(O, in_channels, kh, kw)`` (see module docstring)."""
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (c / in_channels)


def torchvision_to_encoder(
    sd: dict[str, torch.Tensor], keep_prefixes: tuple[str, ...], first_conv: str, in_channels: int
) -> dict[str, torch.Tensor]:
    """Key mapping torchvision -> our encoder: keep the feature layers (``keep_prefixes``, e.g.
    ``features.`` or ``conv1. bn1. layer1. ...``), drop the classifier, adapt the first conv.

    Our encoders use torchvision's layer layout, so the kept names are the encoder's own.
    Files saved from a biomedseg network (``encoder.``-prefixed keys) are accepted as well.
    """
    out = {}
    for key, value in sd.items():
        if key.startswith("encoder."):
            key = key[len("encoder.") :]
        if key.startswith(keep_prefixes):
            out[key] = value
    if first_conv in out:
        out[first_conv] = adapt_first_conv(out[first_conv], in_channels)
    return out


def load_encoder_weights(
    encoder: nn.Module, pretrained: str, arch: str, keep_prefixes: tuple[str, ...], first_conv: str, in_channels: int
) -> None:
    """Load ``pretrained`` (``"imagenet"`` or a file path) into ``encoder`` (strict on its keys)."""
    if pretrained == "imagenet":
        path, sd = PRETRAINED_URLS[arch], download_state_dict(PRETRAINED_URLS[arch])
    else:
        path, sd = Path(pretrained), read_state_dict(pretrained)
    mapped = torchvision_to_encoder(sd, keep_prefixes, first_conv, in_channels)
    own = encoder.state_dict()
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in own]
    wrong = [
        f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in mapped and mapped[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        raise UserError(
            f"{path}: does not fit the {arch} encoder ({', '.join(parts)}); pretrained weights need "
            f"the default width (64) and matching batch_norm"
        )
    encoder.load_state_dict(mapped, strict=False)
