"""The working scale: the planner's rule, mask/image resampling, native-resolution outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomedseg.engine.scaled import ScaledNet, at_scale, native_tile
from biomedseg.planning.planner import make_plan
from biomedseg.planning.scale import plan_working_scale
from biomedseg.transforms.resample import resample_image, resample_mask, scaled_shape

BASE = {
    "n_images": 20,
    "channels": 1,
    "bit_depth": 8,
    "class_names": ["background", "fg"],
    "background": 0,
    "class_share": [0.7, 0.3],
    "image_share": [1.0, 1.0],
}


def fingerprint(shape, p90, p10, width):
    return dict(
        BASE,
        median_shape=list(shape),
        min_shape=list(shape),
        object_diameter_p90={"fg": p90},
        object_diameter_p10={"fg": p10},
        structure_width={"fg": width},
    )


def test_large_objects_get_a_smaller_scale_and_whole_images():
    fp = fingerprint((540, 800), p90=500, p10=270, width=1000)  # one large object per image (fetal head)
    entry = plan_working_scale(fp, 256)
    assert entry["value"] == pytest.approx(0.32)
    assert "whole 540x800 image" in entry["reason"]
    plan = make_plan(fp, 900, "cpu", step_time=lambda *a: 0.5)
    assert plan["working_scale"]["value"] == pytest.approx(0.32)
    assert plan["patch_size"]["value"] == 256 and "whole images" in plan["patch_size"]["reason"]
    assert native_tile(256, 0.32) == 800


def test_thin_structures_and_small_objects_keep_scale_one():
    membranes = fingerprint((512, 512), p90=270, p10=12, width=6.8)  # one connected mesh, thin walls
    entry = plan_working_scale(membranes, 256)
    assert entry["value"] == 1.0 and "membrane" not in entry["reason"] and "fg (6.8px wide)" in entry["reason"]
    specks = fingerprint((600, 800), p90=160, p10=15, width=40)  # large cells beside 15px specks
    assert plan_working_scale(specks, 256)["value"] == 1.0
    small = fingerprint((1000, 1000), p90=40, p10=16, width=24)  # nuclei: 4 diameters fit a patch
    assert plan_working_scale(small, 256)["value"] == 1.0
    assert make_plan(small, 900, "cpu", step_time=lambda *a: 0.5)["working_scale"]["value"] == 1.0


def test_scale_is_snapped_to_whole_native_tiles_and_respects_the_floor():
    fp = fingerprint((560, 500), p90=280, p10=60, width=200)  # breast-ultrasound-like lesions
    s = plan_working_scale(fp, 256)["value"]
    assert 256 / s == pytest.approx(round(256 / s))
    assert 0.4 < s < 0.5
    floored = fingerprint((560, 500), p90=280, p10=20, width=200)  # 20px specks: floor 16/20 = 0.8
    assert plan_working_scale(floored, 256)["value"] == 1.0


def test_mask_resampling_keeps_a_two_pixel_line_and_a_three_pixel_object():
    for offset in (0, 1):  # the line aligned with the new pixel grid, and straddling it
        m = np.zeros((64, 64), np.uint8)
        m[20 + offset : 22 + offset, :] = 1  # a 2-px horizontal line
        m[40 + offset : 43 + offset, 30 + offset : 33 + offset] = 2  # a 3x3 object
        out = resample_mask(m, (32, 32), 3, 0)
        assert out.shape == (32, 32)
        assert (out == 1).any(axis=0).all(), offset  # the line is unbroken across the image
        assert 1 <= (out == 2).sum() <= 4
        assert out[:5].max() == 0  # no class appears where there was none
    one_px = np.zeros((64, 64), np.uint8)
    one_px[:, 30] = 1  # a 1-px line at a quarter of the resolution: rescued by its coverage
    assert (resample_mask(one_px, (16, 16), 2, 0) == 1).any(axis=1).all()


def test_mask_resampling_does_not_grow_large_objects():
    yy, xx = np.mgrid[:400, :400]
    m = (((yy - 200) / 150.0) ** 2 + ((xx - 200) / 110.0) ** 2 <= 1).astype(np.uint8)
    out = resample_mask(m, (100, 100), 2, 0)
    assert abs(out.mean() - m.mean()) < 0.01


def test_image_resampling_is_anti_aliased_and_keeps_the_dtype():
    img = np.zeros((64, 64, 1), np.uint8)
    img[:, ::2] = 255  # a 1-px stripe pattern: aliasing would keep or drop it, a filter averages it
    out = resample_image(img, scaled_shape(img.shape[:2], 0.5))
    assert out.dtype == np.uint8 and out.shape == (32, 32, 1)
    assert 100 < out[4:-4, 4:-4].mean() < 155 and out[4:-4, 4:-4].std() < 20


class _Identityish(torch.nn.Module):
    """Two output channels: the input and its negation (lets a test follow pixels through the scale)."""

    def forward(self, x):
        self.seen = tuple(x.shape[-2:])
        return torch.cat([x, -x], 1)


def test_scaled_net_returns_native_size_logits():
    net = _Identityish()
    wrapped = at_scale(net, 0.5)
    assert isinstance(wrapped, ScaledNet) and at_scale(net, 1.0) is net
    x = torch.zeros(1, 1, 96, 128)
    x[..., 40:60, 50:90] = 1.0
    y = wrapped(x)
    assert net.seen == (48, 64) and y.shape == (1, 2, 96, 128)
    assert float((y[0, 0] > 0.5).float().mean()) == pytest.approx(float((x[0, 0] > 0.5).float().mean()), abs=0.01)


@pytest.fixture(scope="module")
def scaled_run(synthetic_data, tmp_path_factory):
    from tests.conftest import TINY

    from biomedseg.training.api import train

    return train(
        synthetic_data,
        tmp_path_factory.mktemp("scaled") / "run",
        epochs=1,
        seed=0,
        quiet=True,
        **{**TINY, "patch_size": 32, "working_scale": 0.5},
    )


def test_training_at_a_working_scale_predicts_at_native_resolution(scaled_run, synthetic_data):
    from biomedseg.inference.predict.core import predict_image
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image

    loaded = load_run(scaled_run)
    assert loaded.settings.working_scale == 0.5 and loaded.tile_size == 64
    image = read_image(sorted((synthetic_data / "images").iterdir())[0])
    mask, proba = predict_image(loaded, loaded.predictor(), image)
    assert mask.shape == image.shape[:2] and proba.shape[1:] == image.shape[:2]
    assert np.allclose(proba.sum(0), 1.0, atol=1e-4)


def test_exported_scaled_networks_match_at_any_tile_size(scaled_run, tmp_path):
    from biomedseg.inference.exported.graph import onnx_model, torchscript_module
    from biomedseg.inference.run import load_run

    ort = pytest.importorskip("onnxruntime")
    loaded = load_run(scaled_run)
    script, _ = torchscript_module(loaded.model, loaded.info.channels, loaded.tile_size)
    proto, _ = onnx_model(loaded.model, loaded.info.channels, loaded.tile_size)
    session = ort.InferenceSession(proto.SerializeToString())
    for hw in [(64, 64), (96, 128), (80, 112)]:  # the traced tile and two others
        x = torch.randn(2, loaded.info.channels, *hw)
        with torch.no_grad():
            ref, ts = loaded.model(x), script(x)
        ts = ts[0] if isinstance(ts, (tuple, list)) else ts
        assert ref.shape[-2:] == hw
        assert torch.allclose(ref, ts, atol=1e-5)
        assert np.allclose(ref.numpy(), session.run(None, {"input": x.numpy()})[0], atol=1e-4)


def test_mixed_pixel_sizes_are_brought_to_the_reference_grid():
    from biomedseg.data.datasets import CachedSample
    from biomedseg.io.pixel_size import pixel_size_factor
    from biomedseg.training.data_setup import DataSetup, TrainingData, at_working_scale

    assert pixel_size_factor([0.5, 0.5], (0.5, 0.502)) is None  # within the tolerance
    assert pixel_size_factor([0.5, 0.5], (1.0, 0.25)) == (2.0, 0.5)
    assert pixel_size_factor(None, (1.0, 1.0)) is None
    fine = CachedSample("fine", np.zeros((80, 80, 1), np.uint8), np.zeros((80, 80), np.uint8), pixel_size=(0.5, 0.5))
    coarse = CachedSample(
        "coarse", np.zeros((40, 40, 1), np.uint8), np.zeros((40, 40), np.uint8), pixel_size=(1.0, 1.0)
    )
    coarse.mask[10:20, 10:20] = 1
    setup = DataSetup(None, [], ["background", "fg"], None, True, 0, 1, {})
    data = TrainingData(setup, [fine, coarse], [])
    same = at_working_scale(data, 1.0, pixel_size=[0.5, 0.5])
    assert [s.shape for s in same.train] == [(80, 80), (80, 80)]  # the coarse image enlarged to 0.5 µm
    assert (same.train[1].mask == 1).sum() == 400
    half = at_working_scale(data, 0.5, pixel_size=[0.5, 0.5])
    assert [s.shape for s in half.train] == [(40, 40), (40, 40)]
    assert at_working_scale(data, 1.0, pixel_size=None) is data  # unknown reference: nothing to do


def test_prediction_resamples_an_image_of_another_pixel_size():
    from biomedseg.engine.scaled import logits_at_pixel_size

    class Recorder:
        def predict_logits(self, image):
            self.seen = tuple(image.shape[-2:])
            return torch.as_tensor(image)[:1].repeat(2, 1, 1)

    pred = Recorder()
    image = np.random.default_rng(0).random((1, 60, 90), dtype=np.float32)
    out = logits_at_pixel_size(pred, image, (2.0, 2.0))  # pixels twice the training data's: enlarged 2x
    assert pred.seen == (120, 180) and tuple(out.shape) == (2, 60, 90)
    assert logits_at_pixel_size(pred, image, None).shape[-2:] == (60, 90) and pred.seen == (60, 90)
