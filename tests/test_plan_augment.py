"""Augmentation planned from measurements: the config list and its reason, the per-channel
(colour) jitter, and a config list through TrainConfig, build_augmenter and plan.yaml."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from biomedseg.core.errors import UserError
from biomedseg.planning.augment import FLIP_P, augment_fingerprint, plan_augment
from biomedseg.planning.planner import apply_plan
from biomedseg.runs import read_plan
from biomedseg.runs.config import TrainConfig, build_config
from biomedseg.transforms import augment as A
from biomedseg.transforms.basic import build_augmenter


def _orientation(lr=True, ud=True, rot=True, n=40):
    def entry(invariant, ratio):
        return {
            "score": 0.5 if not invariant else 0.05,
            "floor": 0.1,
            "ratio": ratio,
            "invariant": invariant,
            "statistic": "mean_image",
            "reason": "...",
        }

    return {
        "n_images": n,
        "anisotropy": 1.0,
        "lr_flip": entry(lr, 1.1 if lr else 4.0),
        "ud_flip": entry(ud, 1.2 if ud else 5.1),
        "rot90": entry(rot, 1.3 if rot else 6.0),
    }


def _variation(rgb=False):
    v = {
        "n_images": 40,
        "channels": 3 if rgb else 1,
        "brightness_spread": 0.2,
        "contrast_spread": 0.1,
        "ranges": {"brightness": 0.35, "contrast": [0.84, 1.19]},
    }
    if rgb:
        v.update(colour_shift_spread=0.1, colour_scale_spread=0.05)
        v["ranges"].update(channel_shift=0.17, channel_scale=[0.92, 1.09])
    return v


def _names(value):
    return [e["name"] for e in value]


def _entry(value, name):
    return next(e for e in value if e["name"] == name)


def test_no_preferred_orientation_keeps_all_eight():
    plan = plan_augment({"orientation": _orientation(), "intensity_variation": _variation()})
    assert _names(plan["value"])[0] == "flip_rot90" and "flip" not in _names(plan["value"])
    assert "no preferred orientation" in plan["reason"] and "1.2x" in plan["reason"]
    assert "channel_jitter" not in _names(plan["value"])  # grey data


def test_depth_axis_keeps_left_right_flips_only():
    plan = plan_augment({"orientation": _orientation(ud=False, rot=False), "intensity_variation": _variation()})
    names = _names(plan["value"])
    assert "flip_rot90" not in names and "rot90" not in names
    assert _entry(plan["value"], "flip") == {"name": "flip", "p": FLIP_P, "horizontal": True, "vertical": False}
    assert "up-down flip changes the mean image by 0.50 std (5.1x the noise floor)" in plan["reason"]
    assert "left-right flips only" in plan["reason"]
    pipe = build_augmenter(plan["value"])
    flip = pipe.transforms[0]
    assert isinstance(flip, A.Flip) and flip.horizontal and not flip.vertical


def test_left_right_flips_never_turn_an_image_upside_down():
    flip = A.Flip(p=0.5, horizontal=True, vertical=False)
    img = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
    mask = (img[0] > 20).astype(np.int64)
    seen = set()
    for seed in range(20):
        out, m = flip(img, mask, np.random.default_rng(seed))
        lr = np.array_equal(out, img[:, :, ::-1])
        assert lr or np.array_equal(out, img)
        assert np.array_equal(m, mask[:, ::-1] if lr else mask)
        seen.add(lr)
    assert seen == {True, False}


def test_only_rotation_changes_gives_both_flips_and_nothing_changes_gives_none():
    both = plan_augment({"orientation": _orientation(rot=False)})["value"]
    assert _entry(both, "flip")["horizontal"] and _entry(both, "flip")["vertical"]
    assert "flip_rot90" not in _names(both)
    none = plan_augment({"orientation": _orientation(lr=False, ud=False, rot=False)})
    assert not {"flip", "flip_rot90", "rot90"} & set(_names(none["value"]))
    assert "no flips or rotations" in none["reason"]


def test_intensity_ranges_and_colour_come_from_the_measurement():
    plan = plan_augment({"orientation": _orientation(), "intensity_variation": _variation(rgb=True)})
    value = plan["value"]
    assert _entry(value, "brightness")["delta"] == 0.35
    assert _entry(value, "contrast")["factor"] == [0.84, 1.19]
    jitter = _entry(value, "channel_jitter")
    assert jitter["shift"] == 0.17 and jitter["scale"] == [0.92, 1.09]
    assert "brightness +-0.35" in plan["reason"] and "colour" in plan["reason"]
    # everything else as the default preset
    default = {e["name"]: e for e in A.DEFAULT_AUGMENT}
    for name in ("rotate", "scale", "gamma", "gaussian_noise", "blur"):
        assert _entry(value, name) == default[name]
    assert A.DEFAULT_AUGMENT[3]["delta"] == 0.2  # the preset itself is not modified
    kinds = [type(t).__name__ for t in build_augmenter(value).transforms]
    assert kinds == [
        "FlipRot90",
        "Spatial",
        "Brightness",
        "Contrast",
        "ChannelJitter",
        "Gamma",
        "GaussianNoise",
        "GaussianBlur",
    ]


def test_missing_measurements_fall_back_to_the_default_preset():
    plan = plan_augment({})
    assert plan["value"] == [dict(e) for e in A.DEFAULT_AUGMENT]
    assert "no orientation measured" in plan["reason"]


def test_fingerprint_of_samples_is_plain_data_and_plans():
    rng = np.random.default_rng(0)
    samples = [SimpleNamespace(image=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(6)]
    fp = augment_fingerprint(samples, 3)
    assert set(fp) == {"orientation", "intensity_variation"}
    assert yaml.safe_load(yaml.safe_dump(fp)) == fp  # plain data: it goes into plan.yaml's fingerprint
    fp = json.loads(json.dumps(fp))
    plan = plan_augment(fp)
    assert _names(plan["value"])[0] == "flip_rot90" and "channel_jitter" in _names(plan["value"])
    build_augmenter(plan["value"])


# -- channel jitter --------------------------------------------------------------------------


def test_channel_jitter_acts_per_channel_and_keeps_the_mask():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((3, 32, 40)).astype(np.float32)
    mask = (img[0] > 0).astype(np.int64)
    out, m = A.ChannelJitter(p=1.0, scale=(0.5, 1.5), shift=0.5)(img, mask, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.float32 and m is mask
    a = [np.polyfit(img[c].ravel(), out[c].ravel(), 1) for c in range(3)]  # out_c = a_c x_c + b_c exactly
    for c in range(3):
        np.testing.assert_allclose(np.polyval(a[c], img[c]), out[c], atol=1e-4)
        assert 0.5 <= a[c][0] <= 1.5 and abs(a[c][1]) <= 0.5
    assert len({round(float(x[0]), 4) for x in a}) == 3  # independent per channel
    same, _ = A.ChannelJitter(p=0.0)(img, mask, np.random.default_rng(1))
    assert same is img
    with pytest.raises(UserError, match="shift"):
        A.build_augmentations([{"name": "channel_jitter", "shift": -1}])


# -- a config list through the config, build_augmenter and plan.yaml ---------------------------


def test_config_accepts_a_preset_or_a_list():
    spec = [{"name": "flip", "p": 0.5, "vertical": False}, {"name": "channel_jitter", "p": 0.3}, "blur"]
    cfg = TrainConfig(augment=spec)
    assert cfg.augment == spec and TrainConfig().augment == "default"
    again = build_config(yaml.safe_load(cfg.to_yaml()))
    assert again.augment == spec
    assert [type(t).__name__ for t in build_augmenter(again.augment).transforms] == [
        "Flip",
        "ChannelJitter",
        "GaussianBlur",
    ]
    with pytest.raises(UserError, match="augment"):
        build_config({"augment": 3})
    with pytest.raises(UserError, match="unknown transform"):
        build_augmenter([{"name": "twirl"}])


def test_plan_yaml_round_trips_a_list(tmp_path):
    planned = {
        "augment": plan_augment(
            {"orientation": _orientation(ud=False, rot=False), "intensity_variation": _variation(rgb=True)}
        )
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(planned, sort_keys=False))
    back = read_plan(path)
    assert back["augment"]["value"] == planned["augment"]["value"]
    cfg = build_config(apply_plan(TrainConfig().model_dump(), back, {}), source="plan")
    assert cfg.augment == planned["augment"]["value"]
    user = TrainConfig(augment="strong").model_dump()
    assert build_config(apply_plan(user, back, {"augment": "strong"})).augment == "strong"  # the user's choice wins
