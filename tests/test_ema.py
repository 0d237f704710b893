"""Moving average of the weights (``ema``) and checkpoint selection (``select``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biomedseg.core.errors import UserError
from biomedseg.runs import load_checkpoint
from biomedseg.runs.config import TrainConfig, build_config
from biomedseg.training.ema import (
    EMA_MAX_DECAY,
    EMA_MIN_DECAY,
    WeightAverage,
    auto_decay,
    checkpoint_weights,
    restore_weights,
)
from biomedseg.training.loop_state import TrainState
from biomedseg.training.selection import SMOOTHING_WINDOW, choose_best, selection_score
from conftest import TINY

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run_format_v1" / "run"


def _net(norm: str = "instance") -> torch.nn.Module:
    from biomedseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", 1, 2, norm=norm, **TINY["model_kwargs"])


def _set_all(net: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.fill_(value)


# ---------------------------------------------------------------- the average itself


@pytest.mark.parametrize("warmup", [None, 10])
def test_average_after_n_updates_equals_the_closed_form(warmup):
    """Weights w_0 (start), then w_k = k after update k: avg_n = sum_k w_k (1 - d_k) prod_{j>k} d_j."""
    net = _net()
    _set_all(net, 0.0)
    avg = WeightAverage(net, decay=0.8, warmup=warmup)
    decays = []
    for k in range(1, 8):
        _set_all(net, float(k))
        decays.append(avg.decay())
        avg.update()
    expected = 0.0
    for k, d in enumerate(decays, start=1):
        expected = d * expected + (1 - d) * k
    if warmup is None:  # constant decay: the geometric sum in closed form
        n, d = 7, 0.8
        closed = sum(k * (1 - d) * d ** (n - k) for k in range(1, n + 1))
        assert expected == pytest.approx(closed)
        assert decays == [0.8] * 7
    else:
        assert decays[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12])  # warm-up: min(0.8, (1+n)/(10+n))
    assert avg.updates == 7
    for v in avg.module.state_dict().values():
        if v.is_floating_point():
            assert torch.allclose(v, torch.full_like(v, expected), atol=1e-5)


def test_batchnorm_statistics_are_averaged_and_counters_copied():
    net = _net("batch")
    avg = WeightAverage(net, decay=0.5, warmup=None)
    _set_all(net, 2.0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.num_batches_tracked.fill_(5)
    avg.update()
    sd = avg.module.state_dict()
    means = [k for k in sd if k.endswith("running_mean")]
    counts = [k for k in sd if k.endswith("num_batches_tracked")]
    assert means and counts
    start = _net("batch").state_dict()
    for k in means:
        assert torch.allclose(sd[k], 0.5 * start[k] + 0.5 * 2.0)
    assert all(int(sd[k]) == 5 for k in counts)


def test_auto_decay_half_life_and_bounds():
    d = auto_decay(2000)  # half-life 5% of 2000 = 100 steps
    assert d**100 == pytest.approx(0.5)
    assert auto_decay(10) == EMA_MIN_DECAY  # a very short run: not more averaged than that
    assert auto_decay(1e9) == EMA_MAX_DECAY
    assert auto_decay(0) == EMA_MIN_DECAY
    avg = WeightAverage(_net())
    assert avg.decay(iteration=100, progress=0.05) == pytest.approx(min(auto_decay(2000), 1 / 10))
    avg.updates = 10_000
    assert avg.decay(iteration=100, progress=0.05) == pytest.approx(auto_decay(2000))


def test_ema_option_values():
    assert TrainConfig().ema is False and TrainConfig().select == "best"
    assert build_config({"ema": True}).ema is True
    assert build_config({"ema": 0.99}).ema == 0.99
    for bad in (1, 0, 1.5, -0.1):
        with pytest.raises(UserError, match="ema"):
            build_config({"ema": bad})
    with pytest.raises(UserError, match="select"):
        build_config({"select": "median"})


# ---------------------------------------------------------------- checkpoints and resume


def _trainer(**cfg):
    from biomedseg.losses.build import build_loss
    from biomedseg.training.optim import ProgressSchedule
    from biomedseg.training.trainer import Trainer

    model = _net()
    config = TrainConfig(device="cpu", channels_last=False, **cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return Trainer(
        config,
        model,
        build_loss("dice+ce", 2, None),
        opt,
        ProgressSchedule(opt, "poly", 1e-2),
        None,
        [],
        None,
        2,
        ["background", "fg"],
        0,
        ".",
        torch.device("cpu"),
        "fp32",
        1,
        quiet=True,
    )


def _steps(trainer, n: int) -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.zeros(2, 32, 32, dtype=torch.int64)
    y[:, 8:20, 8:20] = 1
    for i in range(n):
        trainer.train_step(torch.randn(2, 1, 32, 32, generator=g), y)
        trainer.ema.update(i + 1, (i + 1) / 100)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_state_round_trips_through_a_checkpoint(tmp_path):
    from biomedseg.runs import save_checkpoint

    a = _trainer(ema=True)
    _steps(a, 3)
    assert not _same(a.ema.module.state_dict(), a.net.state_dict())
    save_checkpoint(tmp_path / "last.pt", a.checkpoint_state(TrainState(epoch=1, iteration=3, val_scores=[0.2])))
    ck = load_checkpoint(tmp_path / "last.pt")
    assert _same(ck["model"], a.ema.module.state_dict())  # what prediction loads is the average
    assert _same(ck["ema"]["online"], a.net.state_dict())
    b = _trainer(ema=True)
    state = b.restore(ck)
    assert state.val_scores == [0.2]
    assert _same(b.net.state_dict(), a.net.state_dict())
    assert _same(b.ema.module.state_dict(), a.ema.module.state_dict())
    assert b.ema.updates == a.ema.updates == 3
    _steps(a, 2)  # both continue alike (the average keeps tracking b's restored weights)
    _steps(b, 2)
    assert _same(b.ema.module.state_dict(), a.ema.module.state_dict())


def test_checkpoint_without_ema_entries_loads_with_and_without_ema():
    """Old checkpoints (the format-1 fixture) have no ``ema``/``val_scores``: the average starts from
    their weights."""
    from biomedseg.models import create_model

    ck = load_checkpoint(FIXTURE_RUN / "checkpoints" / "best.pt")
    assert "ema" not in ck and "val_scores" not in ck
    kwargs = {"depth": 2, "base_channels": 4, "num_res_units": 0}
    for ema in (None, True):
        net = create_model("unet", 1, 3, **kwargs)
        avg = WeightAverage(net) if ema else None
        if avg is not None:
            avg.updates = 4
        restore_weights(ck, net, avg)
        assert _same(net.state_dict(), ck["model"])
        if avg is not None:
            assert _same(avg.module.state_dict(), ck["model"]) and avg.updates == 0
            assert _same(checkpoint_weights(net, avg)["ema"]["online"], ck["model"])
    trainer = _trainer(ema=0.9)  # a checkpoint without entries, on a trainer with an average
    plain = _trainer().checkpoint_state(TrainState(epoch=2))
    assert "ema" not in plain
    state = trainer.restore(plain)
    assert state.val_scores == [] and _same(trainer.ema.module.state_dict(), plain["model"])


@pytest.mark.slow
def test_ema_leaves_the_training_itself_unchanged(synthetic_data, tmp_path):
    """Same seed, ema off and on: the trained weights are bitwise the same (the average reads them,
    it draws no random numbers); with ema off the checkpoint has no ``ema`` entry."""
    from biomedseg.training.api import train

    off = train(synthetic_data, tmp_path / "off", epochs=1, seed=7, quiet=True, **TINY)
    on = train(synthetic_data, tmp_path / "on", epochs=1, seed=7, quiet=True, ema=True, **TINY)
    a = load_checkpoint(off / "checkpoints" / "last.pt")
    b = load_checkpoint(on / "checkpoints" / "last.pt")
    assert "ema" not in a and b["ema"]["updates"] == b["iteration"]
    assert _same(a["model"], b["ema"]["online"])
    assert not _same(b["model"], b["ema"]["online"])


@pytest.mark.slow
def test_resume_with_ema_equals_uninterrupted(synthetic_data, tmp_path, monkeypatch):
    """Interrupted after epoch 1 and resumed: the average and the trained weights of an uninterrupted run."""
    from biomedseg.training.api import train
    from biomedseg.training.trainer import Trainer

    full = train(synthetic_data, tmp_path / "full", epochs=2, seed=5, quiet=True, ema=True, **TINY)
    original, calls = Trainer.validate, []

    def crash_on_second(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "validate", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_data, tmp_path / "part", epochs=2, seed=5, quiet=True, ema=True, **TINY)
    monkeypatch.setattr(Trainer, "validate", original)
    part = train(synthetic_data, tmp_path / "part", resume=True, quiet=True)
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(part / "checkpoints" / "last.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"]
    for x, y in ((a["model"], b["model"]), (a["ema"]["online"], b["ema"]["online"])):
        assert max(float((x[k].float() - y[k].float()).abs().max()) for k in x) < 1e-5
    assert len(b["val_scores"]) == 2


# ---------------------------------------------------------------- checkpoint selection

SCORES = [0.30, 0.62, 0.41, 0.55, 0.58, 0.57, 0.50]  # one lucky 0.62 early on


def _select(rule: str, scores, validated=None) -> tuple[list[int], TrainState]:
    """The epochs that got ``best.pt`` (``validated[i]`` False: epoch i + 1 did not validate), and
    the final state."""
    state, chosen = TrainState(), []
    for epoch, s in enumerate(scores, start=1):
        state.epoch = epoch
        if choose_best(state, rule, s if validated is None or validated[epoch - 1] else None, has_val=True):
            chosen.append(epoch)
    return chosen, state


def test_best_rule_keeps_the_highest_single_score():
    chosen, state = _select("best", SCORES)
    assert chosen == [1, 2] and state.best_epoch == 2 and state.best_score == 0.62


def test_smoothed_rule_picks_the_best_mean_of_the_last_validations():
    assert SMOOTHING_WINDOW == 3
    chosen, state = _select("smoothed", SCORES)
    means = [selection_score(SCORES[:i], "smoothed") for i in range(1, len(SCORES) + 1)]
    assert means[5] == pytest.approx((0.55 + 0.58 + 0.57) / 3)
    assert state.best_epoch == 6 == 1 + max(range(len(means)), key=means.__getitem__)
    assert state.best_score == pytest.approx(means[5])
    assert state.val_scores == SCORES


def test_last_rule_and_epochs_without_validation():
    chosen, state = _select("last", SCORES)
    assert chosen == list(range(1, 8)) and state.best_score == 0.50
    validated = [False, True, False, True, False, False, True]
    chosen, state = _select("best", SCORES, validated)
    assert chosen == [2] and state.val_scores == [0.62, 0.55, 0.50]
    chosen, _ = _select("last", SCORES, validated)
    assert chosen == list(range(1, 8))
    state = TrainState(epoch=3)  # no validation images: every epoch, the score untouched
    assert choose_best(state, "smoothed", None, has_val=False) and state.best_epoch == 3 and state.best_score == -1.0
