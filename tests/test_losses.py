"""Losses: hand-computed values on tiny cases, perfect predictions, gradients, spec strings."""

from __future__ import annotations

import math

import pytest
import torch

from biomedseg.core.errors import UserError
from biomedseg.losses.build import build_loss, class_weights_from_counts, list_losses, parse_spec

# Two pixels, two classes, target [1, 0]; softmax foreground probabilities p1 = [0.8, 0.3].
P1 = torch.tensor([0.8, 0.3])
LOGITS = torch.stack([torch.zeros(2), torch.log(P1 / (1 - P1))]).reshape(1, 2, 1, 2)
TARGET = torch.tensor([[[1, 0]]])
# soft counts per class (class 0: p0 = [0.2, 0.7], g0 = [0, 1]; class 1: p1, g1 = [1, 0])
TP = {0: 0.7, 1: 0.8}
FP = {0: 0.2, 1: 0.3}
FN = {0: 0.3, 1: 0.2}


def _mean(f):
    return (f(0) + f(1)) / 2


HAND = {
    "ce": -(math.log(0.8) + math.log(0.7)) / 2,
    "bce": -(math.log(0.8) + math.log(0.7)) / 2,  # sigmoid(z1 - z0) is the softmax probability
    "dice": 1 - _mean(lambda c: 2 * TP[c] / (2 * TP[c] + FP[c] + FN[c])),
    "dice:include_background=false": 1 - 2 * 0.8 / (1.6 + 0.3 + 0.2),
    "jaccard": 1 - _mean(lambda c: TP[c] / (TP[c] + FP[c] + FN[c])),
    "tversky:alpha=0.3,beta=0.7": 1 - _mean(lambda c: TP[c] / (TP[c] + 0.3 * FP[c] + 0.7 * FN[c])),
    "fbeta:beta=2": 1 - _mean(lambda c: 5 * TP[c] / (5 * TP[c] + 4 * FN[c] + FP[c])),
    # Lovasz: class 1 errors [0.2, 0.3] -> sorted pixel 2 (bg), pixel 1 (fg): grads [0.5, 0.5] -> 0.25;
    # class 0 errors [0.2, 0.3] -> sorted pixel 2 (fg), pixel 1 (bg): grads [1, 0] -> 0.3
    "lovasz": (0.25 + 0.3) / 2,
    "focal:gamma=2": -(0.2**2 * math.log(0.8) + 0.3**2 * math.log(0.7)) / 2,
}


@pytest.mark.parametrize("spec", sorted(HAND))
def test_hand_computed_values(spec):
    assert float(build_loss(spec, 2)(LOGITS, TARGET)) == pytest.approx(HAND[spec], rel=1e-3, abs=1e-5)


def test_weighted_ce_by_hand():
    w = torch.tensor([1.0, 3.0])
    expected = -(3 * math.log(0.8) + 1 * math.log(0.7)) / (3 + 1)
    assert float(build_loss("ce", 2, w)(LOGITS, TARGET)) == pytest.approx(expected, rel=1e-5)
    # bce uses the same per-pixel weights (mean of weighted terms)
    expected_bce = -(3 * math.log(0.8) + 1 * math.log(0.7)) / 2
    assert float(build_loss("bce", 2, w)(LOGITS, TARGET)) == pytest.approx(expected_bce, rel=1e-5)


def test_class_weights_from_counts():
    w = class_weights_from_counts([90, 10], "inverse")
    assert torch.allclose(w, torch.tensor([0.1, 0.9]) / 0.5)
    assert class_weights_from_counts([90, 10], "none") is None
    assert torch.allclose(class_weights_from_counts([90, 10], "1,4"), torch.tensor([1.0, 4.0]))
    with pytest.raises(UserError):
        class_weights_from_counts([90, 10], "1,2,3")


def test_equivalences():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))

    def val(spec):
        return float(build_loss(spec, 3)(logits, target))

    assert val("tversky:alpha=0.5,beta=0.5") == pytest.approx(val("dice"), abs=1e-5)
    assert val("fbeta:beta=1") == pytest.approx(val("dice"), abs=1e-5)
    b2 = 4.0
    assert val("fbeta:beta=2") == pytest.approx(val(f"tversky:alpha={1 / (1 + b2)},beta={b2 / (1 + b2)}"), abs=1e-5)
    assert val("dice+ce") == pytest.approx(val("dice") + val("ce"), rel=1e-6)
    assert val("0.5*focal+dice") == pytest.approx(0.5 * val("focal") + val("dice"), rel=1e-6)
    assert val("focal:gamma=0") == pytest.approx(val("ce"), rel=1e-5)


def test_bce_single_logit_and_multiclass():
    z = torch.tensor([2.0, -1.0]).reshape(1, 1, 1, 2)
    t = torch.tensor([[[1, 0]]])
    expected = -(math.log(torch.sigmoid(torch.tensor(2.0))) + math.log(1 - torch.sigmoid(torch.tensor(-1.0)))) / 2
    assert float(build_loss("bce", 1)(z, t)) == pytest.approx(expected, rel=1e-5)
    logits = torch.randn(1, 3, 2, 2)
    target = torch.randint(0, 3, (1, 2, 2))
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot)
    assert float(build_loss("bce", 3)(logits, target)) == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize(
    "spec",
    ["dice", "jaccard", "tversky", "fbeta", "lovasz", "ce", "bce", "focal", "dice:include_background=false", "dice+ce"],
)
def test_perfect_prediction_is_minimal(spec):
    target = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40.0
    n = 2 if spec == "bce" else 3
    if spec == "bce":  # binary
        target = (target > 0).long()
        perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40.0
    value = float(build_loss(spec, n)(perfect, target))
    assert value == pytest.approx(0.0, abs=1e-4)
    worse = float(build_loss(spec, n)(torch.zeros_like(perfect), target))
    assert worse > value + 0.05


@pytest.mark.parametrize("name", ["ce", "bce", "dice", "focal", "jaccard", "tversky", "fbeta", "lovasz"])
def test_finite_gradients(name):
    torch.manual_seed(1)
    k = 2 if name == "bce" else 3
    logits = (torch.randn(2, k, 9, 11) * 5).requires_grad_()
    target = torch.randint(0, k, (2, 9, 11))
    target[1] = 0  # one image without foreground
    loss = build_loss(name, k)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_lovasz_absent_classes_and_all():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)  # only class 0 present
    present = build_loss("lovasz", 3)(logits, target)
    all_cls = build_loss("lovasz:classes=all", 3)(logits, target)
    assert torch.isfinite(present) and torch.isfinite(all_cls)
    assert not torch.isclose(present, all_cls)


def test_every_registered_loss_is_covered():
    assert {"ce", "bce", "dice", "focal", "jaccard", "tversky", "fbeta", "lovasz"} <= set(list_losses())


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("dice+ce", [(1.0, "dice", {}), (1.0, "ce", {})]),
        ("0.5*focal+dice", [(0.5, "focal", {}), (1.0, "dice", {})]),
        ("tversky:alpha=0.3,beta=0.7", [(1.0, "tversky", {"alpha": "0.3", "beta": "0.7"})]),
        ("0.5*focal:gamma=3+dice", [(0.5, "focal", {"gamma": "3"}), (1.0, "dice", {})]),
        ("dice + 2*ce", [(1.0, "dice", {}), (2.0, "ce", {})]),
        ("tversky:alpha=0.3,beta=0.7+0.5*ce", [(1.0, "tversky", {"alpha": "0.3", "beta": "0.7"}), (0.5, "ce", {})]),
        ("dice:include_background=false+lovasz", [(1.0, "dice", {"include_background": "false"}), (1.0, "lovasz", {})]),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected
    assert torch.isfinite(build_loss(spec, 2)(LOGITS, TARGET))


@pytest.mark.parametrize(
    "spec,match", [("dise", "unknown loss"), ("tversky:gamma=2", "tversky"), ("dice:smooth", "key=value")]
)
def test_bad_specs(spec, match):
    with pytest.raises(UserError, match=match):
        build_loss(spec, 2)


# -- learning-rate schedules (training/optim.py; kept here with the other objective tests) ------


def _schedule(name, **kw):
    from biomedseg.training.optim import ProgressSchedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return opt, ProgressSchedule(opt, name, 0.1, **kw)


def test_step_schedule():
    opt, s = _schedule("step")
    assert [round(s.step(p), 6) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_cosine_with_warmup():
    _, s = _schedule("cosine", warmup_fraction=0.1)
    assert s.step(0.0) < 0.002 and s.step(0.1) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert s.step(1.0) == pytest.approx(0.0, abs=1e-12)


def test_plateau_schedule():
    opt, s = _schedule("plateau", patience=2)
    scores = [0.5, 0.6, 0.6, 0.59, 0.7, 0.7, 0.7, 0.7, 0.7]
    factors = [s.observe(v) for v in scores]
    assert factors == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert s.step(0.3) == pytest.approx(0.1 * 0.125)
    state = s.state_dict()
    _, s2 = _schedule("plateau", patience=2)
    s2.load_state_dict(state)
    assert s2.step(0.9) == pytest.approx(0.1 * 0.125)
    _, poly = _schedule("poly")
    assert poly.observe(0.1) == 1.0 and poly.observe(0.0) == 1.0  # a no-op for the other schedules


def test_unknown_schedule():
    with pytest.raises(UserError, match="schedule"):
        _schedule("sometimes")
