"""Shared fixtures: tiny synthetic datasets and the real datasets beside the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("BIOMEDSEG_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "datasets"

# Small, fast training settings shared by the end-to-end tests.
TINY = {
    "model_kwargs": {"depth": 3, "base_channels": 8, "num_res_units": 0},
    "patch_size": 64,
    "batch_size": 4,
    "iterations_per_epoch": 6,
    "num_threads": 2,
}


#: fixtures that train a network, start a cluster or export networks through torch.onnx: every
#: test using one, directly or through another fixture, is marked ``slow`` (``pytest -m "not slow"``
#: leaves it out). Tests are marked by hand too: those that train or start processes (a cluster,
#: ranks), and the CLI tests that start a process each, but for a few that keep the exit-code
#: contract in the fast subset (test_cli.py: ``test_corrupt_png``, ``test_usage_errors_exit_2``).
SLOW_FIXTURES = frozenset(
    {"trained_run", "second_run", "finished_cv", "colour_run", "scaled_run", "client", "unet_exports", "package"}
)

# tests that asked for a real dataset: those that got it and those skipped because it is absent
_REAL_DATA: dict[str, set[str]] = {"found": set(), "absent": set()}
_CURRENT_TEST = [""]


def shared_dataset(name: str) -> Path:
    """Path of ``../shared/datasets/<name>``; skips the test with a reason when absent."""
    path = SHARED / name
    if not (path / "images").is_dir():
        _REAL_DATA["absent"].add(_CURRENT_TEST[0])
        pytest.skip(f"real dataset {name!r} not available (expected at {path}; ../shared is absent)")
    _REAL_DATA["found"].add(_CURRENT_TEST[0])
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _CURRENT_TEST[0] = item.nodeid


def pytest_terminal_summary(terminalreporter):
    """One line: how many tests ran on the real datasets (CI reads it to see ../shared was used)."""
    found, absent = _REAL_DATA["found"], _REAL_DATA["absent"] - _REAL_DATA["found"]
    if not (found or absent):
        return
    stats = terminalreporter.stats
    passed = {r.nodeid for r in stats.get("passed", []) if r.when == "call"}
    failed = {r.nodeid for r in stats.get("failed", []) + stats.get("error", [])}
    terminalreporter.write_line(
        f"real-data tests ({SHARED}): {len(found)} ran ({len(found & passed)} passed, "
        f"{len(found & failed)} failed or errored), {len(absent)} skipped for missing data"
    )


@pytest.fixture(autouse=True, scope="session")
def use_leak_safe_log_records():
    """Overrides the fixture of the same name of napari's pytest plugin (loaded in every session
    where napari is installed: the ``napari`` extra): it turns the arguments of every log record
    into strings for the whole session, so ``log.info("%d", numpy_int)`` fails to format. The
    napari tests do not need it; nothing here does."""
    yield


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A tiny 3-class synthetic dataset (10 train, 4 test images of 64x96)."""
    from biomedseg.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(out / "data", n_train=10, n_test=4, size=(64, 96), seed=1)


@pytest.fixture(scope="session")
def trained_run(synthetic_data, tmp_path_factory) -> Path:
    """A run trained for 2 short epochs on :func:`synthetic_data` (shared by several tests)."""
    from biomedseg.training.api import train

    out = tmp_path_factory.mktemp("runs") / "run"
    return train(synthetic_data, out, epochs=2, seed=0, quiet=True, **TINY)


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """One torch thread and a fixed seed for the test; the thread count is restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def write_fake_run(
    run: Path,
    model: str,
    state_dict: dict,
    data: Path | None,
    val_ids: list[str],
    patch_size: int,
    batch_size: int,
    model_kwargs: dict | None = None,
    n_classes: int = 2,
    **config,
) -> Path:
    """A RUN folder (``runs.write_run``: checkpoint, config, dataset info) for a 1-channel model of
    ``n_classes`` whose validation split is ``val_ids`` of ``data``: lets tests load hand-built
    networks as runs."""
    from biomedseg.runs import DatasetInfo, write_run

    values = {
        "model": model,
        **({"model_kwargs": model_kwargs} if model_kwargs else {}),
        "patch_size": patch_size,
        "batch_size": batch_size,
        **config,
        "device": "cpu",
        "precision": "fp32",
        "num_threads": 1,
    }
    info = DatasetInfo(
        classes=["background", "cell"] if n_classes == 2 else ["background"] + [f"c{i}" for i in range(1, n_classes)],
        background=0,
        palette={"values": [[i] for i in range(n_classes)]},
        strict_index=False,
        channels=1,
        n_classes=n_classes,
        normalization={"mean": [100.0], "std": [50.0]},
        split={"train": [], "val": list(val_ids)},
        source=str(data.resolve()) if data else "",
    )
    write_run(run, values, info, {"model": state_dict})
    return run


@pytest.fixture
def threshold_run(tmp_path):
    """A run whose 'network' is a fixed 1x1 convolution: foreground where the image is > 100."""
    import torch
    from torch import nn

    from biomedseg.models import create_model, registry

    name = "_test_threshold_logits"

    def factory(in_channels, n_classes, **_):
        conv = nn.Conv2d(in_channels, n_classes, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[1, 0] = 8.0  # z = (x - 100) / 50
        return conv

    registry.register(name, multiple=1, description="test")(factory)
    yield write_fake_run(
        tmp_path / "run",
        name,
        create_model(name, 1, 2).state_dict(),
        None,
        [],
        patch_size=32,
        batch_size=4,
        overlap=0.25,
    )
    registry._REGISTRY.pop(name, None)
