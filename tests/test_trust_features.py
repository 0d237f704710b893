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
    assert not module._forward_hooks  # the hook is removed afterwards


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
