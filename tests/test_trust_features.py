"""Pooled bottleneck features taken during the prediction pass, for every kind of network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_features_come_from_the_same_pass_and_leave_the_probabilities_alone(trained_run, synthetic_data):
    from biomedseg.inference.predict.core import predict_proba_image
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image
    from biomedseg.trust.features import bottleneck_sites, predict_with_features

    run = load_run(trained_run, device="cpu")
    predictor = run.predictor()
    image = read_image(min((synthetic_data / "images").glob("*.png")))
    proba, feats = predict_with_features(run, predictor, image)
    np.testing.assert_array_equal(proba, predict_proba_image(run, predictor, image))
    ((module, where),) = bottleneck_sites(predictor.model)
    assert where == "output"
    assert feats is not None and feats.shape == (
        2 * run.run.config_values()["model_kwargs"]["base_channels"] * 4,
    )  # means and stds
    other = predict_with_features(run, predictor, np.flipud(255 - image).copy())[1]
    assert not np.allclose(feats, other)
    assert len(module._forward_hooks) == 1  # one persistent hook, whatever the number of images
    np.testing.assert_allclose(predict_with_features(run, predictor, image)[1], feats, rtol=1e-6)  # reset per image


def test_compiled_network_is_not_recompiled_by_the_feature_tap(trained_run, synthetic_data):
    """The tap's hooks stay the same and sum into tensors: a compiled predictor compiles its graph
    once for many images (a hook appending to a list recompiled it on every tile batch) and gives
    the eager features."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image
    from biomedseg.trust.features import predict_with_features

    images = [read_image(p) for p in sorted((synthetic_data / "images").glob("*.png"))[:3]]
    eager_run = load_run(trained_run, device="cpu")
    eager = [predict_with_features(eager_run, eager_run.predictor(), im)[1] for im in images]
    run = load_run(trained_run, device="cpu")
    predictor = run.predictor(compile="aot_eager")  # dynamo without inductor: no C++ compiler needed
    torch._dynamo.reset()
    counters.clear()
    got = [predict_with_features(run, predictor, im)[1] for im in images * 2]
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # before and after the first sums
    for g, e in zip(got, eager * 2):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["unet-classic", "segnet"])
def test_encoder_decoder_networks_and_ensembles(name):
    from biomedseg.engine.ensemble_model import EnsembleModel
    from biomedseg.models import create_model
    from biomedseg.transforms.normalize import Normalizer
    from biomedseg.trust.features import FeatureTap, bottleneck_sites

    torch.manual_seed(0)
    kwargs = {"base_channels": 4, "depth": 3} if name == "unet-classic" else {}
    net = create_model(name, 1, 3, **kwargs).eval()
    sites = bottleneck_sites(net)
    assert len(sites) == 1
    x = torch.randn(2, 1, 32, 32)
    with FeatureTap(sites) as tap, torch.no_grad():
        net(x)
    one = tap.vector()
    assert one is not None and one.ndim == 1
    norm = Normalizer(mean=[0.0], std=[1.0])
    ens = EnsembleModel([net, create_model(name, 1, 3, **kwargs).eval()], [norm, norm], [1, 1], 3)
    with FeatureTap(bottleneck_sites(ens)) as tap, torch.no_grad():
        ens(x)
    both = tap.vector()
    assert both.shape == (2 * one.size,)
    np.testing.assert_allclose(both[: one.size], one, rtol=1e-5, atol=1e-6)
