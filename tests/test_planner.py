"""The planner: every choice has a reason, measurements drive the width, user values win."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from biomedseg.planning.planner import apply_plan, make_plan
from biomedseg.planning.width_curves import crossover_steps

FP = {
    "n_images": 20,
    "median_shape": [512, 512],
    "min_shape": [512, 512],
    "channels": 1,
    "bit_depth": 8,
    "class_names": ["background", "cell", "rare"],
    "background": 0,
    "class_share": [0.8, 0.19, 0.01],
    "image_share": [1.0, 1.0, 0.5],
    "object_diameter_p90": {"cell": 20.0, "rare": 5.0},
}


def assert_reasons_cite_their_inputs(plan: dict, fp: dict, budget_s: int) -> None:
    """Every planned value has its own one-line reason, and the reasons name the facts the value
    follows from (the fingerprint's numbers, the budget, the other planned values), so a reason
    that no longer matches its value fails here."""
    entries = {k: e for k, e in plan.items() if isinstance(e, dict) and "value" in e}
    reasons = {k: e["reason"] for k, e in entries.items()}
    value = {k: e["value"] for k, e in entries.items()}
    for key, reason in reasons.items():
        assert isinstance(reason, str) and reason.strip() and "\n" not in reason, key
    assert len(set(reasons.values())) == len(reasons), "two choices share one reason"
    assert f"{value['batch_size']} patches of {value['patch_size']}px" in reasons["batch_size"]
    assert f"on a {value['patch_size']}px patch" in reasons["model_kwargs.depth"]
    assert f"of the {budget_s}s budget" in reasons["iterations"]
    assert f"~{value['iterations']} steps" in reasons["model_kwargs.base_channels"]
    fg = [share for c, share in enumerate(fp["class_share"]) if c != fp["background"]]
    assert f"holds {min(fg):.2%} of the pixels" in reasons["fg_oversample"]
    assert f"{fp['bit_depth']}-bit data" in reasons["normalization"]
    assert ("clip" in reasons["normalization"]) == (value["normalization"] == "clip_zscore")


def test_every_value_has_a_reason():
    plan = make_plan(FP, 600, "cpu", step_time=lambda *a: 1.0)
    assert len(plan) >= 10
    for key, entry in plan.items():
        assert set(entry) == {"value", "reason"}, key
    assert_reasons_cite_their_inputs(plan, FP, 600)
    assert "images 512x512, 90th-percentile object diameter 20px" in plan["patch_size"]["reason"]
    other = dict(
        FP,
        median_shape=[300, 400],
        min_shape=[300, 400],
        bit_depth=16,
        class_share=[0.5, 0.3, 0.2],
        object_diameter_p90={"cell": 40.0, "rare": 12.0},
    )
    plan = make_plan(other, 1800, "cpu", step_time=lambda *a: 0.5)
    assert_reasons_cite_their_inputs(plan, other, 1800)
    assert "images 300x400, 90th-percentile object diameter 40px" in plan["patch_size"]["reason"]
    yaml.safe_dump(plan)  # serialisable as plan.yaml


def test_width_follows_measured_steps():
    budget, crossover = 600, crossover_steps()
    slow = make_plan(FP, budget, "cpu", step_time=lambda *a: budget / (crossover / 2))
    fast = make_plan(FP, budget, "cpu", step_time=lambda *a: budget / (crossover * 4))
    assert slow["model_kwargs.base_channels"]["value"] == 16
    assert "measured" in slow["model_kwargs.base_channels"]["reason"]
    assert fast["model_kwargs.base_channels"]["value"] == 32
    assert make_plan(FP, None, "cpu")["model_kwargs.base_channels"]["value"] == 32  # epochs: no budget pressure


def test_rare_class_gets_oversampled_and_patch_fits_image():
    plan = make_plan(FP, None, "cpu")
    assert plan["fg_oversample"]["value"] == 0.5
    small = dict(FP, median_shape=[100, 180], min_shape=[90, 150])
    p = make_plan(small, None, "cpu")["patch_size"]["value"]
    assert p <= 100 and p & (p - 1) == 0  # power of two within the image
    assert make_plan(FP, None, "cuda")["patch_size"]["value"] == 512
    common = dict(FP, class_share=[0.5, 0.3, 0.2])
    assert make_plan(common, None, "cpu")["fg_oversample"]["value"] == 0.33


def test_large_objects_get_a_large_patch_in_a_smaller_batch_on_cpu():
    mesh = dict(FP, object_diameter_p90={"cell": 270.0, "rare": 5.0}, class_share=[0.5, 0.3, 0.2])
    plan = make_plan(mesh, 600, "cpu", step_time=lambda *a: 0.5)
    assert plan["patch_size"]["value"] == 512 and plan["batch_size"]["value"] == 2  # same pixels per step
    small = make_plan(FP, 600, "cpu", step_time=lambda *a: 0.5)
    assert small["patch_size"]["value"] == 128 and small["batch_size"]["value"] == 8
    narrow = dict(mesh, median_shape=[300, 400], min_shape=[300, 400])
    plan = make_plan(narrow, 600, "cpu", step_time=lambda *a: 0.5)
    assert plan["patch_size"]["value"] == 256 and plan["batch_size"]["value"] == 8  # within the image
    rare = dict(mesh, class_share=[0.8, 0.19, 0.01])  # a class under 5%: 8 patches, half centred on it
    plan = make_plan(rare, 600, "cpu", step_time=lambda *a: 0.5)
    assert plan["patch_size"]["value"] == 256 and plan["batch_size"]["value"] == 8
    assert "under 5%" in plan["patch_size"]["reason"]


def test_user_values_win():
    plan = make_plan(FP, 600, "cpu", step_time=lambda *a: 10.0)
    values = {"patch_size": 256, "batch_size": 8, "model_kwargs": {"depth": 4}, "lr": 0.002}
    explicit = {"batch_size": 2, "model_kwargs": {"depth": 4}}
    out = apply_plan({**values, "batch_size": 2}, plan, explicit)
    assert out["batch_size"] == 2  # user
    assert out["model_kwargs"]["depth"] == 4  # user
    assert out["model_kwargs"]["base_channels"] == plan["model_kwargs.base_channels"]["value"]  # plan
    assert out["fg_oversample"] == plan["fg_oversample"]["value"]


def test_other_architectures_are_narrowed_only_when_the_budget_is_short():
    budget = 600
    calls = []

    def step_time(patch, batch, depth, width):  # cost ~ width^2, 64 wide: 40 steps fit
        calls.append(width)
        return budget / 40 * (width / 64) ** 2

    plan = make_plan(FP, budget, "cpu", step_time=step_time, model="unet-classic", width_option=("base_channels", 64))
    assert plan["model_kwargs.base_channels"]["value"] == 16  # 64 -> 32 (~160 steps) -> 16 (~640)
    assert calls == [64, 64, 32, 32, 16, 16]  # the published width and each narrower one (twice each)
    assert "base_channels=64" in plan["model_kwargs.base_channels"]["reason"]
    roomy = make_plan(
        FP, budget, "cpu", step_time=lambda *a: budget / 4000, model="vgg16-unet", width_option=("width", 64)
    )
    assert roomy["model_kwargs.width"]["value"] == 64 and "model_kwargs.base_channels" not in roomy
    assert (
        make_plan(FP, None, "cpu", model="segnet", width_option=("base_channels", 64))["model_kwargs.base_channels"][
            "value"
        ]
        == 64
    )


def test_plan_entries_apply_to_the_architecture_that_takes_them():
    from biomedseg.planning.stage import plan_applies as _plan_applies

    assert _plan_applies("model_kwargs.depth", "unet", {})
    assert not _plan_applies("model_kwargs.depth", "segnet", {})  # published depth kept
    assert _plan_applies("model_kwargs.base_channels", "segnet", {})
    assert _plan_applies("model_kwargs.width", "resnet34-unet", {})
    assert not _plan_applies("model_kwargs.width", "resnet34-unet", {"pretrained": "w.pt"})  # weights fix it
    assert not _plan_applies("model_kwargs.base_channels", "resnet34-unet", {})
    assert _plan_applies("lr", "segnet", {})


@pytest.mark.slow
def test_measured_step_of_another_architecture_scales_a_probe_batch(monkeypatch):
    """A step of the probe batch runs (not the full one), and its time is scaled by batch / probe."""
    import time

    import biomedseg.models
    from biomedseg.planning.planner import measure_step_time

    t = measure_step_time(1, 2, 32, 8, None, 8, model="segnet", probe_batch=2)
    assert t > 0
    # with a clock that advances 1 s per forward pass only
    clock, batches = [0.0], []
    real_create = biomedseg.models.create_model

    def create(*args, **kwargs):
        net = real_create(*args, **kwargs)

        def one_second_forward(module, inputs):
            batches.append(inputs[0].shape[0])
            clock[0] += 1.0

        net.register_forward_pre_hook(one_second_forward)
        return net

    monkeypatch.setattr(biomedseg.models, "create_model", create)
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    assert measure_step_time(1, 2, 32, 8, None, 8, model="segnet", probe_batch=2, repeats=2) == 4.0
    assert batches == [2, 2, 2]  # a warm-up step, then the 2 timed ones
    batches.clear()
    assert measure_step_time(1, 2, 32, 4, None, 8, model="segnet") == 1.0
    assert batches == [4, 4]


@pytest.mark.slow
def test_plan_file_carries_its_architecture_and_width(synthetic_data, tmp_path):
    """A plan made for one architecture trains that architecture with the planned width; naming
    another model on the command line drops the planned sizes."""
    from biomedseg.training.api import train

    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        yaml.safe_dump(
            {
                "model": {"value": "segnet", "reason": "planned for segnet"},
                "model_kwargs.base_channels": {"value": 4, "reason": "tiny for the test"},
                "patch_size": {"value": 32, "reason": "tiny"},
            }
        )
    )
    tiny = {"batch_size": 2, "iterations_per_epoch": 2, "num_threads": 1}
    run = train(
        synthetic_data, tmp_path / "a", epochs=1, quiet=True, plan=plan_file, model_kwargs={"stages": 3}, **tiny
    )
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "segnet" and cfg["model_kwargs"]["base_channels"] == 4 and cfg["patch_size"] == 32
    run = train(
        synthetic_data,
        tmp_path / "b",
        epochs=1,
        quiet=True,
        plan=plan_file,
        model="unet",
        model_kwargs={"depth": 3, "num_res_units": 0},
        **tiny,
    )
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "unet" and cfg["patch_size"] == 32  # options that are not sizes still apply
    assert cfg["model_kwargs"].get("base_channels", 32) == 32  # segnet's planned width did not carry over


def test_normalization_follows_bit_depth():
    assert make_plan(FP, 600, "cpu")["normalization"]["value"] == "zscore"
    deep = make_plan(dict(FP, bit_depth=16), 600, "cpu")["normalization"]
    assert deep["value"] == "clip_zscore" and "99.5" in deep["reason"]


def test_iterations_come_from_the_measured_step_or_the_epochs():
    timed = make_plan(FP, 600, "cpu", step_time=lambda *a: 0.5)["iterations"]
    assert timed["value"] == int(0.85 * 600 / 0.5) and "0.50s" in timed["reason"]
    narrowed = make_plan(FP, 600, "cpu", step_time=lambda p, b, d, w: 4.0 if w == 32 else 1.0)
    assert narrowed["model_kwargs.base_channels"]["value"] == 16
    assert narrowed["iterations"]["value"] == int(0.85 * 600 / 1.0)  # the step of the chosen width
    by_epochs = make_plan(FP, None, "cpu", epochs=3)  # 20 images of 512^2, 8 patches of 128^2: 20*16/8
    assert by_epochs["iterations"]["value"] == 3 * 40


def test_fingerprint_measures_structure_width():
    from types import SimpleNamespace

    from biomedseg.planning.planner import fingerprint_from_samples

    mask = np.zeros((128, 128), np.uint8)
    mask[20:23, 10:120] = 1  # a line 3 px wide
    mask[60:63, 10:120] = 1
    mask[80:120, 20:60] = 2  # a 40x40 blob
    image = np.zeros((128, 128, 1), np.uint8)
    fp = fingerprint_from_samples([SimpleNamespace(image=image, mask=mask)], 3, ["bg", "line", "blob"], 0, 1)
    assert 2.5 <= fp["structure_width"]["line"] <= 3.5
    assert fp["structure_width"]["blob"] > 20
    assert "bg" not in fp["structure_width"]


def test_compile_is_planned_for_long_cpu_budgets_with_a_compiler():
    assert make_plan(FP, 600, "cpu", can_compile=True)["compile"]["value"] is True
    assert (
        make_plan(FP, 300, "cpu", can_compile=True)["compile"]["value"] is False
    )  # a minute of compiling would not pay
    assert make_plan(FP, None, "cpu", can_compile=True)["compile"]["value"] is False
    no_cc = make_plan(FP, 1800, "cpu", can_compile=False)["compile"]
    assert no_cc["value"] is False and "compiler" in no_cc["reason"]
    assert make_plan(FP, 1800, "cuda", can_compile=True)["compile"]["value"] is False


def test_thin_structures_get_a_full_resolution_level_when_affordable():
    thin = dict(FP, structure_width={"cell": 14.0, "rare": 3.2})
    key = "model_kwargs.full_res_channels"
    assert make_plan(thin, 1800, "cpu", can_compile=True)[key]["value"] == 8
    assert make_plan(thin, 600, "cpu", can_compile=True)[key]["value"] == 0  # a wash at 10 min (§9)
    eager = make_plan(thin, 1800, "cpu", can_compile=False)[key]
    assert eager["value"] == 0 and "eager" in eager["reason"]  # halves the eager step rate: not on CPU without compile
    assert make_plan(thin, None, "cuda")[key]["value"] == 8
    blobs = dict(FP, structure_width={"cell": 14.0, "rare": 9.5})
    assert make_plan(blobs, 1800, "cpu", can_compile=True)[key]["value"] == 0
    assert (
        make_plan(dict(thin, background=None, class_names=["bg", "cell", "rare"]), 1800, "cpu", can_compile=True)[key][
            "value"
        ]
        == 8
    )
    assert key not in make_plan(
        thin, 1800, "cpu", can_compile=True, model="segnet", width_option=("base_channels", 64)
    )  # only the U-Net has the option


@pytest.mark.slow
def test_plan_command_reads_budget_and_device_from_the_config_file(synthetic_data, tmp_path):
    """`biomedseg plan --config FILE` plans for the file's time_budget and device (they were ignored)."""
    from biomedseg.training.api import plan_data

    config = tmp_path / "c.yaml"
    config.write_text("time_budget: 30m\ndevice: cpu\nnum_threads: 1\n")
    result = plan_data(synthetic_data, tmp_path / "plan.yaml", config=config, quiet=True)
    assert result["time_budget_s"] == 1800.0
    assert result["device"] == "cpu"
    assert "85% of the 1800s budget" in result["iterations"]["reason"]
    # a flag still wins over the file
    result = plan_data(synthetic_data, None, config=config, time_budget="5m", quiet=True)
    assert result["time_budget_s"] == 300.0


def test_the_plan_says_when_a_cv_ensemble_should_beat_one_run():
    from biomedseg.planning.ensemble import MIN_STEPS_PER_FOLD, fold_advice, plan_ensemble

    # 600 s at 0.1 s per step: ~5100 steps, ~1000 per fold: one run, and the budget that would do
    short = make_plan(FP, 600, "cpu", step_time=lambda *a: 0.1)["ensemble"]
    steps = make_plan(FP, 600, "cpu", step_time=lambda *a: 0.1)["iterations"]["value"]
    need_min = 600 * 5 * MIN_STEPS_PER_FOLD / steps / 60
    assert short["value"] == "single" and f"~{need_min:.0f} min" in short["reason"]
    # 100x the budget: every fold past the threshold
    assert make_plan(FP, 60000, "cpu", step_time=lambda *a: 0.1)["ensemble"]["value"] == "cv"
    assert plan_ensemble(None, 600)["value"] == "single"
    assert plan_ensemble(5 * MIN_STEPS_PER_FOLD, None)["value"] == "cv"
    # cv's warning names the per-fold budget that reaches the threshold, and is silent past it
    assert "--budget-per-fold ~60 min" in fold_advice(MIN_STEPS_PER_FOLD // 10, 360)
    assert fold_advice(MIN_STEPS_PER_FOLD, 360) is None and fold_advice(None, 360) is None
