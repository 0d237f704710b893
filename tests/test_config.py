"""Training configuration: valid ranges of every number, and an explicit null that undoes a value."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from biomedseg.core.errors import UserError
from biomedseg.runs.config import MAX_PATCH_SIZE, MIN_PATCH_SIZE, TrainConfig, build_config, merge, parse_overrides


def test_explicit_null_wins_over_an_earlier_layer():
    assert merge({"time_budget": 600.0, "epochs": 3}, {"time_budget": None}) == {"time_budget": None, "epochs": 3}
    assert merge({"model_kwargs": {"depth": 4}}, {"model_kwargs": {"depth": None}}) == {"model_kwargs": {"depth": None}}


def test_set_null_undoes_a_value_of_the_config_file(tmp_path):
    from biomedseg.training.api import resolve_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"time_budget": "10m", "num_threads": 2, "epochs": 5}))
    assert resolve_config(cfg_file).time_budget == 600.0
    cfg = resolve_config(cfg_file, parse_overrides(["time_budget=null", "num_threads=null"]))
    assert cfg.time_budget is None and cfg.num_threads is None and cfg.epochs == 5


def test_cli_passes_an_explicit_null_and_leaves_unset_flags_out(tmp_path, monkeypatch):
    import biomedseg.training.api as api
    from biomedseg.cli import app

    seen = {}

    def fake_train(data, out, **kwargs):
        seen.update(kwargs)
        return out

    monkeypatch.setattr(api, "train", fake_train)
    r = CliRunner().invoke(
        app, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "time_budget=null", "--lr", "0.01"]
    )
    assert r.exit_code == 0, r.output
    assert "time_budget" in seen and seen["time_budget"] is None  # the null reaches the config
    assert seen["lr"] == 0.01
    assert "epochs" not in seen and "batch_size" not in seen  # flags left unset are not "set to None"


@pytest.mark.parametrize(
    "option,value",
    [
        ("epochs", 0),
        ("epochs", -1),
        ("batch_size", 0),
        ("patch_size", MIN_PATCH_SIZE - 1),
        ("patch_size", MAX_PATCH_SIZE + 1),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("lr", float("inf")),
        ("lr", float("nan")),
        ("weight_decay", -0.1),
        ("momentum", 1.0),
        ("warmup_fraction", 1.0),
        ("grad_clip", 0.0),
        ("time_budget", 0),
        ("time_budget", "0m"),
        ("iterations_per_epoch", 0),
        ("fg_oversample", -0.1),
        ("fg_oversample", 1.01),
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("overlap", 1.0),
        ("overlap", -0.5),
        ("val_every", 0),
        ("seed", -1),
        ("num_threads", 0),
        ("channels", 0),
        ("classifier_loss_weight", -1.0),
    ],
)
def test_impossible_values_are_refused_in_one_line(option, value):
    with pytest.raises(UserError, match=f"option '{option}'") as info:
        build_config({option: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "option,value",
    [
        ("epochs", 1),
        ("patch_size", MIN_PATCH_SIZE),
        ("patch_size", MAX_PATCH_SIZE),
        ("patch_size", 100),
        ("val_fraction", 0.0),
        ("overlap", 0.0),
        ("fg_oversample", 1.0),
        ("fg_oversample", 0.0),
        ("weight_decay", 0.0),
        ("warmup_fraction", 0.0),
        ("momentum", 0.0),
        ("time_budget", "90s"),
        ("classifier_loss_weight", 0.0),
    ],
)
def test_the_edges_of_each_range_are_accepted(option, value):
    assert getattr(build_config({option: value}), option) is not None


def test_defaults_are_within_their_ranges():
    assert build_config(TrainConfig().model_dump()) == TrainConfig()
