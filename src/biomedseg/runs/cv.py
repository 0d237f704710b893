"""The cross-validation folder of ``biomedseg cv``: its layout and records.

::

    CV/run.json               kind "cv": folds, seed, data folder, training budget per fold
    CV/plan.yaml              the plan made once and shared by the folds
    CV/folds.json             the training pool, the test ids kept aside, each fold's train/val ids
    CV/fold_<i>/              fold i: an ordinary run folder (evaluate, predict, export accept it)
    CV/fold_<i>/cv_fold.json  the fold's state in the CV ("trained", then "done" with its
                              out-of-fold scores: confusion matrix, per-image rows, TTA)
    CV/oof/<id>.npy           out-of-fold probabilities ``(K, H, W) float16`` of each pool image,
                              predicted by the fold that did not train on it
    CV/summary.json           per-fold and mean +/- sd validation metrics, pooled out-of-fold metrics
    CV/config.yaml, CV/dataset.json
                              the CV as an ensemble of its folds (written as folds finish)
    CV/postprocess.yaml       tuned on the out-of-fold predictions; applies to the CV ensemble
    CV/.prepare.lock          held while one process writes run.json, folds.json and plan.yaml

Each fold writes only files of its own (its folder, its images' ``oof/<id>.npy``), so folds
can be trained by separate processes at once (``biomedseg cv --fold K``). What they share is
prepared under :func:`preparing`: the first process writes the folds and the plan, the others
wait for it and reuse them (one audit, one step measurement, one ``plan.yaml``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.io.writers import atomic_path, write_json
from biomedseg.runs.folder import RunFolder
from biomedseg.runs.records import RunInfo

FOLDS_JSON = "folds.json"
SUMMARY_JSON = "summary.json"
FOLD_RECORD = "cv_fold.json"
OOF_DIR = "oof"
FOLD_PREFIX = "fold_"
#: states of a fold in ``cv_fold.json``: trained (the network is final), done (out-of-fold predicted)
TRAINED, DONE = "trained", "done"
PREPARE_LOCK = ".prepare.lock"
#: the lock's holder refreshes its time this often; a lock not refreshed for ``LOCK_STALE_S`` (or
#: whose process on this machine is gone) is stale: its holder died, and a waiting process takes over
LOCK_REFRESH_S, LOCK_STALE_S, LOCK_POLL_S = 10.0, 120.0, 0.5

log = logging.getLogger("biomedseg")


class CVFolder(RunFolder):
    """A cross-validation folder: a :class:`RunFolder` (its ``config.yaml``/``dataset.json`` are
    those of the ensemble of its folds) with the folds, their records and the out-of-fold data."""

    def __repr__(self) -> str:
        return f"CVFolder({str(self.root)!r})"

    @property
    def folds_json(self) -> Path:
        return self.root / FOLDS_JSON

    @property
    def summary_json(self) -> Path:
        return self.root / SUMMARY_JSON

    @property
    def oof_dir(self) -> Path:
        return self.root / OOF_DIR

    def fold_dir(self, i: int) -> Path:
        return self.root / f"{FOLD_PREFIX}{i}"

    def fold(self, i: int) -> RunFolder:
        return RunFolder(self.fold_dir(i))

    def oof_path(self, sample_id: str) -> Path:
        return self.oof_dir / f"{sample_id}.npy"

    def n_folds(self) -> int:
        """The number of folds (``run.json``; else ``folds.json``)."""
        k = getattr(self.info(), "folds", None)
        return int(k) if k else len(self.folds()["folds"])

    # ------------------------------------------------------------------ records
    def folds(self) -> dict:
        """``folds.json``: ``{"k", "seed", "stratified", "pool", "test", "folds": [{"train", "val"}]}``."""
        data = read_json(self.folds_json)
        if not isinstance(data, dict) or not isinstance(data.get("folds"), list):
            raise UserError(f"{self.folds_json}: not a fold assignment")
        return data

    def write_folds(self, record: dict) -> None:
        write_json(self.folds_json, record)

    def fold_record(self, i: int) -> dict:
        """``fold_<i>/cv_fold.json``, or ``{}`` while the fold is not trained."""
        path = self.fold_dir(i) / FOLD_RECORD
        return read_json(path) if path.is_file() else {}

    def write_fold_record(self, i: int, record: dict) -> None:
        write_json(self.fold_dir(i) / FOLD_RECORD, record)

    def fold_state(self, i: int) -> str | None:
        """``None`` (not trained yet), :data:`TRAINED` or :data:`DONE`."""
        return self.fold_record(i).get("status")

    def summary(self) -> dict:
        return read_json(self.summary_json)

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_json, summary)

    # ------------------------------------------------------------------ out-of-fold probabilities
    def save_oof(self, sample_id: str, proba: np.ndarray) -> None:
        """Store ``(K, H, W)`` probabilities of a pool image as float16 (atomically)."""
        with atomic_path(self.oof_path(sample_id)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(proba, dtype=np.float16))

    def load_oof(self, sample_id: str) -> np.ndarray:
        """The stored ``(K, H, W)`` out-of-fold probabilities of ``sample_id`` as float32."""
        path = self.oof_path(sample_id)
        if not path.is_file():
            raise UserError(f"{path}: out-of-fold prediction missing; run `biomedseg cv` again to finish the CV")
        return np.load(path).astype(np.float32)


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None


def is_cv(path) -> bool:
    """Whether ``path`` is a cross-validation folder (``run.json`` of kind ``cv``)."""
    folder = RunFolder(path)
    return folder.paths.run_json.is_file() and folder.info().kind == "cv"


def create_cv(path, **settings) -> CVFolder:
    """The CV folder at ``path``, created (``run.json`` of kind ``cv`` with ``settings``) or, when it
    already is one, reopened to be resumed; a folder holding anything else is refused."""
    cv = CVFolder(path)
    if cv.root.exists() and any(p.name != PREPARE_LOCK for p in cv.root.iterdir()):
        if not cv.paths.run_json.is_file() or cv.info().kind != "cv":
            raise UserError(f"{cv.root}: exists and is not a cross-validation folder; choose another --out")
        return cv
    cv.root.mkdir(parents=True, exist_ok=True)
    cv.write_info(RunInfo(**RunInfo.new("cv").model_dump(), **settings))
    return cv


def open_cv(path) -> CVFolder:
    """The existing CV folder at ``path`` (a one-line :class:`UserError` otherwise)."""
    cv = CVFolder(path)
    if not is_cv(cv.root):
        raise UserError(f"{cv.root}: not a cross-validation folder of `biomedseg cv`")
    return cv


#: serialises the stale-lock check and removal between threads of this process (between processes a
#: tiny window remains: two waiters judging the same dead lock at once)
_TAKEOVER = threading.Lock()


@contextlib.contextmanager
def preparing(path) -> Iterator[None]:
    """Hold ``CV/.prepare.lock`` (created with ``O_CREAT | O_EXCL``, so one process at a time)
    while the CV folder's shared files are written; other processes wait for it. A stale lock (see
    ``LOCK_STALE_S``) is removed. The folder is created when missing."""
    lock = Path(path) / PREPARE_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            with _TAKEOVER:  # threads of one process judge and remove a stale lock one at a time
                if _stale(lock):
                    log.warning("%s: stale lock of a process that died; taking over", lock)
                    lock.unlink(missing_ok=True)
                    continue
            if not waited:
                log.info("%s: another process is preparing the folds and the plan; waiting for it", lock.parent)
                waited = True
            time.sleep(LOCK_POLL_S)
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, fh)
    stop = threading.Event()
    beat = threading.Thread(target=_refresh, args=(lock, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        lock.unlink(missing_ok=True)


def _refresh(lock: Path, stop: threading.Event) -> None:
    while not stop.wait(LOCK_REFRESH_S):
        with contextlib.suppress(OSError):
            os.utime(lock)


def _stale(lock: Path) -> bool:
    """The lock's holder is gone: a process of this machine that no longer runs, or no refresh for
    ``LOCK_STALE_S`` (a holder on another machine)."""
    try:
        age = time.time() - lock.stat().st_mtime
        holder = json.loads(lock.read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return False  # released meanwhile: try again
    except (OSError, ValueError):
        holder = {}  # being written
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _running(holder["pid"]):
            return True
    return age > LOCK_STALE_S


def _running(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there: rely on the refresh time
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
