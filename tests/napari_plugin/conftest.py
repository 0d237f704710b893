"""The napari plugin's tests: a real napari viewer under an offscreen Qt platform.

napari draws its canvas with OpenGL; Qt's ``offscreen`` platform gets an OpenGL context from an X
display. Without ``DISPLAY``, an ``Xvfb`` server (Debian package ``xvfb``; ``scripts/setup.sh``
installs it) is started for the session. The tests skip, with the reason, when napari, pytest-qt or
a display cannot be had. ``BIOMEDSEG_SCREENSHOTS=docs/images`` makes them save screenshots there.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .support import SHOTS, TINY_NAPARI


def _missing() -> str | None:
    for module in ("napari", "pytestqt", "PyQt5"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[napari]')"
    return None


def _end_with_parent() -> None:
    """In the Xvfb child: receive SIGTERM when the test process has exited (Linux ``PR_SET_PDEATHSIG``).

    Stopping the server from an ``atexit`` handler instead kills it under Qt's still-open connection,
    and Xlib's fatal-IO handler then ends the test process with status 1 after every test passed.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _stop_unused(proc: subprocess.Popen) -> None:
    """At exit, stop Xvfb at once when no Qt application connected to it (otherwise it ends with us)."""
    qt = sys.modules.get("qtpy.QtWidgets")
    if qt is None or qt.QApplication.instance() is None:
        proc.terminate()


def _start_xvfb() -> str | None:
    """Start ``Xvfb`` on a free display for this process; returns why not, or ``None``."""
    if os.environ.get("DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return "no X display and no Xvfb: napari needs OpenGL (apt-get install xvfb, or set DISPLAY)"
    read, write = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        preexec_fn=_end_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        return "Xvfb did not start"
    atexit.register(_stop_unused, proc)
    os.environ["DISPLAY"] = f":{number}"
    return None


SKIP_REASON = _missing()
if SKIP_REASON is None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    SKIP_REASON = _start_xvfb()


def pytest_collection_modifyitems(config, items):
    """The tests that open a viewer skip with the reason; the others skip by themselves when they
    need napari (``pytest.importorskip``) and run without it otherwise."""
    viewer_tests = Path(__file__).parent / "test_napari_plugin.py"
    for item in items:
        if SKIP_REASON and Path(str(item.fspath)) == viewer_tests:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def napari_data(tmp_path_factory) -> Path:
    """A tiny synthetic 3-class DATA folder (8 training, 2 test images of 64x96)."""
    from biomedseg.data.synthetic import make_synthetic_dataset

    size = (160, 240) if SHOTS else (64, 96)
    return make_synthetic_dataset(tmp_path_factory.mktemp("napari") / "data", n_train=8, n_test=2, size=size)


@pytest.fixture(scope="session")
def napari_run(napari_data, tmp_path_factory) -> Path:
    """A run trained for one short epoch (one thread, a few seconds), with ``trust.json`` (the
    training-data description of :mod:`biomedseg.trust`) so predictions get an OOD verdict."""
    import torch

    from biomedseg.inference.run import load_run
    from biomedseg.io.images import read_image
    from biomedseg.training.api import train
    from biomedseg.trust.descriptor import read_description, write_description
    from biomedseg.trust.ood import build_description

    threads = torch.get_num_threads()
    run = train(
        napari_data,
        tmp_path_factory.mktemp("napari_runs") / "run",
        epochs=40 if SHOTS else 1,
        seed=0,
        quiet=True,
        **TINY_NAPARI,
    )
    if read_description(run) is None:  # train writes it once issue 22's wiring lands
        loaded = load_run(run, device="cpu")
        images = [read_image(p) for p in sorted((napari_data / "images").glob("*.png"))]
        write_description(run, build_description(loaded, images[:6], [None] * 6, images[6:8], [None] * 2))
    torch.set_num_threads(threads)
    return run
