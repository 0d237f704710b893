"""Architectures: shapes on odd sizes, deep supervision, SegNet indices, pretrained loading,
classifier head, FLOP counting. Small widths keep everything fast on a busy CPU."""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import threading

import pytest
import torch
from torch import nn

from biomedseg.core.errors import UserError
from biomedseg.models import create_model, list_models
from biomedseg.models.heads import classifier_of, classify
from biomedseg.models.pretrained import sha256_of
from biomedseg.models.summary import count_flops, model_summary

# the smallest sensible width of every architecture
SMALL = {
    "unet": {"base_channels": 4, "depth": 4},
    "unet-classic": {"base_channels": 4},
    "resunet": {"base_channels": 4},
    "attention-unet": {"base_channels": 4},
    "inception-unet": {"base_channels": 4},
    "segnet": {"base_channels": 4},
    "vgg16-unet": {"width": 4},
    "resnet34-unet": {"width": 4},
    "resnet50-unet": {"width": 4},
}
UNET_FAMILY = [
    "unet-classic",
    "resunet",
    "attention-unet",
    "inception-unet",
    "vgg16-unet",
    "resnet34-unet",
    "resnet50-unet",
]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_every_architecture_is_registered_and_tested():
    expected = set(SMALL)
    assert expected <= set(list_models())
    assert set(list_models()) <= expected, "a new architecture needs an entry in SMALL"


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward_odd_size(name, in_channels):
    model = create_model(name, in_channels, 3, **SMALL[name])
    x = torch.randn(2, in_channels, 97, 131)
    y = model(x)
    assert y.shape == (2, 3, 97, 131)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 3, 97, 131)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_channels_last_training_step(name):
    """channels_last (the trainer's default on CUDA; on CPU only with ``channels_last: true``, see
    ``runtime.device.use_channels_last``): a 128px patch reaches the sizes where PyTorch 2.13's
    strided 1x1 conv backward crashed (see StridedPointwiseConv)."""
    model = create_model(name, 1, 2, **SMALL[name]).to(memory_format=torch.channels_last)
    ref = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (2, 128, 128))
    out = model(x)
    assert out.shape == (2, 2, 128, 128)
    nn.functional.cross_entropy(out, y).backward()
    # the channels-last step computes what the contiguous one does; gradients are compared over
    # the whole model (biases just before a BatchNorm get gradients of ~1e-9: rounding noise), and
    # batch statistics on 2 images amplify rounding to ~1e-2 (seen: 2e-3 to 2e-2); a layout bug gives ~1
    ref_out = ref(x.contiguous())
    nn.functional.cross_entropy(ref_out, y).backward()
    torch.testing.assert_close(out, ref_out, rtol=1e-3, atol=1e-3)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    grads, ref_grads = torch.cat([g.flatten() for g in grads]), torch.cat([q.grad.flatten() for q in ref.parameters()])
    assert ref_grads.norm() > 0
    assert (grads - ref_grads).norm() <= 0.1 * ref_grads.norm()


def test_strided_pointwise_conv_equals_strided_conv():
    from biomedseg.models.blocks import StridedPointwiseConv

    ours = StridedPointwiseConv(3, 5, stride=2)
    ref = nn.Conv2d(3, 5, 1, stride=2, bias=False)
    ref.weight.data.copy_(ours.weight.data)
    x = torch.randn(1, 3, 9, 10)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    assert set(ours.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize("name", UNET_FAMILY)
def test_deep_supervision_heads(name):
    model = create_model(name, 1, 2, deep_supervision=True, **SMALL[name])
    x = torch.randn(1, 1, 45, 70)
    model.train()
    out = model(x)
    assert isinstance(out, (list, tuple)) and len(out) == 3
    assert all(t.shape == (1, 2, 45, 70) for t in out)
    sum(t.mean() for t in out).backward()
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 45, 70)


def test_deep_supervision_number_of_heads():
    model = create_model("unet-classic", 1, 2, base_channels=4, deep_supervision=4).train()
    assert len(model.net.down) == 4  # depth 5 = 5 resolution levels, as for "unet"
    assert len(model(torch.randn(1, 1, 32, 32))) == 4


def test_unet_full_resolution_level():
    """``full_res_channels`` adds a stride-1 first level: full-resolution features, same output size
    and the same padding multiple (the bottleneck resolution is unchanged)."""
    plain = create_model("unet", 1, 2, base_channels=4, depth=4)
    full = create_model("unet", 1, 2, base_channels=4, depth=4, full_res_channels=3)
    first = [m for m in full.modules() if isinstance(m, nn.Conv2d)][0]
    assert first.stride == (1, 1) and first.out_channels == 3
    assert [m for m in plain.modules() if isinstance(m, nn.Conv2d)][0].stride == (2, 2)
    x = torch.randn(2, 1, 37, 45)
    assert full(x).shape == plain(x).shape == (2, 2, 37, 45)
    assert sum(p.numel() for p in full.parameters()) > sum(p.numel() for p in plain.parameters())


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="segnet"):
        create_model("segnet", 1, 2, deep_supervision=True)


def test_segnet_decoder_uses_encoder_indices():
    net = create_model("segnet", 1, 2, base_channels=8, stages=3).net.train()  # batch statistics
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        bottleneck, (indices, sizes) = net.encode(x)
        ref = net.decode(bottleneck, (indices, sizes), x.shape[-2:])
        assert torch.allclose(ref, net(x))
        # move every maximum of the deepest pooling to another position of its 2x2 window
        idx = indices[-1]
        w = sizes[-1][1]
        row, col = idx // w, idx % w
        moved = (row - row % 2 + (1 - row % 2)) * w + (col - col % 2 + (1 - col % 2))
        changed = net.decode(bottleneck, (indices[:-1] + [moved], sizes), x.shape[-2:])
    assert not torch.allclose(ref, changed)
    # and the unpooled map really has its non-zeros at the encoder's positions
    up = net.unpool(bottleneck, indices[-1], output_size=sizes[-1])
    flat = up.flatten(2)
    at_indices = torch.zeros_like(flat, dtype=torch.bool).scatter(2, indices[-1].flatten(2), True)
    assert (flat != 0).any() and not ((flat != 0) & ~at_indices).any()


def test_segnet_channels_last():
    model = create_model("segnet", 3, 2, base_channels=4).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 40, 40).contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (1, 2, 40, 40)


def test_classifier_head():
    model = create_model("resunet", 1, 2, base_channels=4, classifier_head=True)
    x = torch.randn(3, 1, 40, 48)
    seg = model(x)
    assert seg.shape == (3, 2, 40, 48)
    head = classifier_of(model)
    assert head.class_logits.shape == (3,)
    assert classify(model, x).shape == (3,)
    loss = seg.mean() + nn.functional.binary_cross_entropy_with_logits(head.class_logits, torch.ones(3))
    loss.backward()
    assert head.head.fc.weight.grad is not None


# -- pretrained weights ------------------------------------------------------------------------


def _torchvision_style(name: str, **kw) -> dict[str, torch.Tensor]:
    """A state dict with torchvision key names and an RGB first conv, made from our encoder."""
    net = create_model(name, 3, 2, **kw).net
    sd = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    if name.startswith("resnet"):
        sd["fc.weight"] = torch.randn(10, net.bottleneck_channels)
        sd["fc.bias"] = torch.randn(10)
    else:
        sd["classifier.0.weight"] = torch.randn(10, 10)
    for v in sd.values():
        if v.is_floating_point():
            v.copy_(torch.randn_like(v))
    return sd


@pytest.mark.parametrize(
    "name,kw,first",
    [
        ("resnet34-unet", {"width": 4}, "conv1.weight"),
        ("resnet50-unet", {"width": 4}, "conv1.weight"),
        ("vgg16-unet", {"width": 4}, "features.0.weight"),
        ("vgg16-unet", {"width": 4, "batch_norm": True}, "features.0.weight"),
    ],
)
def test_pretrained_from_local_file(tmp_path, name, kw, first):
    sd = _torchvision_style(name, **kw)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    grey = create_model(name, 1, 2, pretrained=str(path), **kw).net
    own = grey.encoder.state_dict()
    assert torch.allclose(own[first], sd[first].sum(dim=1, keepdim=True))  # RGB kernels summed for grey input
    for k, v in own.items():
        if k != first:
            assert torch.equal(v, sd[k]), k
    rgb = create_model(name, 3, 2, pretrained=str(path), **kw).net
    assert torch.equal(rgb.encoder.state_dict()[first], sd[first])
    two = create_model(name, 2, 2, pretrained=str(path), **kw).net
    assert torch.allclose(two.encoder.state_dict()[first].sum(1), sd[first].sum(1), atol=1e-5)


def test_pretrained_file_of_wrong_architecture(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_torchvision_style("vgg16-unet", width=4), path)
    with pytest.raises(UserError, match="batch_norm"):
        create_model("vgg16-unet", 1, 2, width=4, batch_norm=True, pretrained=str(path))
    with pytest.raises(UserError, match="missing"):
        create_model("resnet34-unet", 1, 2, width=4, pretrained=str(path))
    with pytest.raises(UserError, match="not found"):
        create_model("resnet34-unet", 1, 2, width=4, pretrained=str(tmp_path / "nope.pth"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """(folder, base_url, request_count) of a local HTTP server on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    hits = []

    class Handler(_QuietHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_pretrained_imagenet_download_with_checksum(tmp_path, monkeypatch, http_folder):
    """torch.hub's check: the file's SHA-256 must start with the hex digits of its name."""
    from biomedseg.models import pretrained

    folder, base, hits = http_folder
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    sd = _torchvision_style("resnet34-unet", width=4)
    torch.save(sd, folder / "weights.pth")
    digest = hashlib.sha256((folder / "weights.pth").read_bytes()).hexdigest()
    good, bad = f"resnet34-{digest[:8]}.pth", f"resnet34-{'0' * 8}.pth"
    for name in (good, bad):
        (folder / name).write_bytes((folder / "weights.pth").read_bytes())
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIOMEDSEG_CACHE", str(cache))

    monkeypatch.setitem(pretrained.PRETRAINED_URLS, "resnet34", f"{base}/{bad}")
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        create_model("resnet34-unet", 1, 2, width=4, pretrained="imagenet")
    assert not list(cache.glob("*")), "a file failing the checksum must not stay in the cache"

    monkeypatch.setitem(pretrained.PRETRAINED_URLS, "resnet34", f"{base}/{good}")
    net = create_model("resnet34-unet", 1, 2, width=4, pretrained="imagenet").net
    assert torch.allclose(net.encoder.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True))
    assert (cache / good).is_file()
    n = len(hits)
    create_model("resnet34-unet", 3, 2, width=4, pretrained="imagenet")  # from the cache
    assert len(hits) == n
    # a damaged cached file is re-checked, dropped and fetched again
    (cache / good).write_bytes(b"damaged")
    create_model("resnet34-unet", 3, 2, width=4, pretrained="imagenet")
    assert len(hits) == n + 1 and sha256_of(cache / good) == digest
    with pytest.raises(UserError, match="download failed"):
        pretrained.download_state_dict(f"{base}/missing-{digest[:8]}.pth", folder=tmp_path / "c3")
    with pytest.raises(UserError, match="no SHA-256 prefix"):  # nothing to check it against: refused
        pretrained.download_state_dict(f"{base}/weights.pth", folder=tmp_path / "c4")


# -- summary -----------------------------------------------------------------------------------


def test_flop_counting_by_hand():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Flatten(), nn.Linear(2 * 16 * 16, 5)
    )
    x = torch.zeros(1, 1, 8, 8)
    conv = 2 * (4 * 8 * 8) * (1 * 9)
    deconv = 2 * (4 * 8 * 8) * (2 * 4)
    linear = 2 * 512 * 5
    assert count_flops(net, x) == conv + deconv + linear


def test_model_summary():
    s = model_summary("unet-classic", size=64, base_channels=4)
    net = create_model("unet-classic", 1, 2, base_channels=4)
    assert s["params"] == sum(p.numel() for p in net.parameters())
    assert s["gflops"] == pytest.approx(count_flops(net.eval(), torch.zeros(1, 1, 64, 64)) / 1e9)
    assert model_summary("segnet", size=64, base_channels=4)["gflops"] > 0
