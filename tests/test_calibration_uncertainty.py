"""Calibration (ECE, temperature) and per-pixel/per-image uncertainty on synthetic maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from biomedseg.metrics.calibration import apply_temperature, expected_calibration_error, fit_temperature, softmax
from biomedseg.metrics.uncertainty import (
    boundary_entropy,
    disagreement_map,
    entropy_map,
    expected_dice_loss,
    mean_entropy,
    mutual_information_map,
    risk_coverage,
    spearman,
)


def _calibrated(n=40_000, k=3, seed=0):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, k))
    p = softmax(logits, axis=1)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, labels


def test_temperature_of_over_confident_logits_is_above_one_and_lowers_ece():
    logits, labels = _calibrated()
    sharp = 3.0 * logits  # over-confident
    t = fit_temperature(sharp, labels)
    assert t > 1.5
    assert abs(t - 3.0) < 0.4
    before = expected_calibration_error(softmax(sharp, axis=1).T, labels)
    after = expected_calibration_error(apply_temperature(sharp, t, axis=1).T, labels)
    assert after < before / 2


def test_temperature_of_calibrated_logits_is_one():
    logits, labels = _calibrated(seed=1)
    assert abs(fit_temperature(logits, labels) - 1.0) < 0.1
    assert expected_calibration_error(softmax(logits, axis=1).T, labels) < 0.02


def test_ece_of_maps_and_wrong_confident_predictions():
    labels = np.zeros((8, 8), np.int64)
    sure_wrong = np.zeros((2, 8, 8))
    sure_wrong[1] = 1.0
    assert expected_calibration_error(sure_wrong, labels) == pytest.approx(1.0)
    sure_right = sure_wrong[::-1]
    assert expected_calibration_error(sure_right, labels) == pytest.approx(0.0)


def _disks(centres, shape=(96, 96), radius=8):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return mask


def _proba(mask, sharpness):
    """Foreground probability = sigmoid(signed distance * sharpness): crisp for large sharpness."""
    signed = ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)
    p1 = 1.0 / (1.0 + np.exp(-sharpness * (signed + 0.5)))
    return np.stack([1 - p1, p1]).astype(np.float32)


def test_blurred_maps_are_more_uncertain_than_crisp_ones():
    mask = _disks([(30, 30), (60, 64)])
    crisp, blurred = _proba(mask, 4.0), _proba(mask, 0.5)
    # an ambiguous object: probability near 0.5 over its area
    ambiguous = crisp.copy()
    ambiguous[1][_disks([(30, 30)])] = 0.55
    ambiguous[0] = 1 - ambiguous[1]
    for score in (mean_entropy, boundary_entropy, expected_dice_loss):
        assert score(blurred, 0) > score(crisp, 0), score.__name__
        assert score(ambiguous, 0) > score(crisp, 0), score.__name__
    assert entropy_map(blurred).max() <= 1.0 + 1e-6
    assert entropy_map(crisp).mean() < entropy_map(blurred).mean()


def test_boundary_score_does_not_grow_with_object_count():
    one = _proba(_disks([(48, 48)]), 2.0)
    many = _proba(_disks([(16, 16), (16, 48), (16, 80), (48, 16), (48, 48), (48, 80), (80, 16), (80, 48)]), 2.0)
    assert mean_entropy(many) > 3 * mean_entropy(one)  # mean entropy grows with the objects ...
    assert boundary_entropy(many) == pytest.approx(boundary_entropy(one), rel=0.1)  # ... this one does not
    assert expected_dice_loss(many) == pytest.approx(expected_dice_loss(one), rel=0.1)


def test_sample_disagreement():
    mask = _disks([(48, 48)])
    p = _proba(mask, 4.0)
    agree = np.stack([p, p, p])
    shifted = np.stack([p, np.roll(p, 6, axis=2), np.roll(p, -6, axis=1)])
    assert mutual_information_map(agree).max() < 1e-6
    assert mutual_information_map(shifted).mean() > 0.01
    assert disagreement_map(agree).max() == 0
    assert 0 < disagreement_map(shifted).mean() < 1


def test_risk_coverage_of_a_perfect_ranking_beats_a_random_one():
    rng = np.random.default_rng(0)
    dice = rng.uniform(0.3, 1.0, size=200)
    perfect = -dice  # most uncertain = lowest Dice
    rc = risk_coverage(perfect, dice)
    random_aurc = np.mean([risk_coverage(rng.random(200), dice)["aurc"] for _ in range(20)])
    assert rc["aurc"] == pytest.approx(rc["aurc_oracle"])
    assert rc["aurc"] < random_aurc - 0.05
    assert random_aurc == pytest.approx(rc["aurc_random"], abs=0.02)
    assert rc["dice_kept"][50] > rc["dice_kept"][20] > rc["dice_kept"][10] > rc["dice_all"]
    assert spearman(perfect, dice) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(5), dice[:5]))


def test_temperature_from_probability_maps_matches_the_logit_fit():
    from biomedseg.metrics.calibration import fit_temperature_maps, temper_probabilities

    logits, labels = _calibrated(n=20_000, seed=2)
    sharp = 2.5 * logits
    maps = [softmax(sharp[i * 5000 : (i + 1) * 5000].T.reshape(3, 50, 100), axis=0) for i in range(4)]
    masks = [labels[i * 5000 : (i + 1) * 5000].reshape(50, 100) for i in range(4)]
    t = fit_temperature_maps(maps, masks)
    assert t == pytest.approx(fit_temperature(sharp, labels), rel=0.02)
    tempered = temper_probabilities(maps[0], t)
    np.testing.assert_allclose(tempered.sum(0), 1.0, atol=1e-5)
    assert expected_calibration_error(tempered, masks[0]) < expected_calibration_error(maps[0], masks[0])
    np.testing.assert_allclose(temper_probabilities(maps[0], 1.0), maps[0], atol=1e-5)


def test_uncertainty_ranking_block():
    from biomedseg.metrics.uncertainty import uncertainty_ranking

    dice = np.linspace(0.2, 0.9, 30)
    block = uncertainty_ranking({"good": list(1 - dice), "bad": list(dice)}, list(dice))
    assert block["good"]["spearman"] == pytest.approx(-1.0) and block["bad"]["spearman"] == pytest.approx(1.0)
    assert block["good"]["aurc"] < block["good"]["aurc_random"] < block["bad"]["aurc"]
