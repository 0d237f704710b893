"""Prediction of many files on a Dask cluster (``pip install "biomedseg[distributed]"``).

One task per input file. Each worker process loads the run **once** (a per-process cache keyed
by run folder, device and checkpoint, filled on the worker's first task) and then predicts with
:func:`biomedseg.inference.predict.predict` into the shared output folder, so everything
``predict`` does (atomic writes, mask written last, skipping finished files, streaming of huge
inputs, post-processing) holds per task. Finished files are skipped *before* submitting, so a
re-run after an interruption only submits what is missing. The RLE CSV, if asked for, is
written at the end by the client from the masks on disk.

The cluster: an existing ``distributed.Client``, a scheduler address (``"tcp://host:8786"``, e.g.
from ``dask-jobqueue``'s ``SLURMCluster``), or a ``LocalCluster`` started for the call. The output
folder must be visible to every worker (shared file system). See ``docs/distributed.md``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from biomedseg.errors import UserError
from biomedseg.runs import open_run
from biomedseg.inference.outputs import output_stem
from biomedseg.inference.predict import PredictSummary

log = logging.getLogger("biomedseg")

_RUNS: dict = {}
_LOCK = threading.Lock()


def _worker_run(run_dir: str, device: str, checkpoint: str, threads: int | None):
    """The run loaded once per worker process (later tasks reuse it)."""
    key = (str(Path(run_dir).resolve()), device, checkpoint)
    with _LOCK:
        if key not in _RUNS:
            import torch

            from biomedseg.inference.run import load_run

            loaded = load_run(run_dir, checkpoint=checkpoint, device=device)
            if threads:
                torch.set_num_threads(int(threads))
            _RUNS[key] = loaded
        return _RUNS[key]


def loaded_runs() -> int:
    """How many runs this process has loaded (1 per worker after any number of tasks)."""
    return len(_RUNS)


#: imported once by the fork server that forks the workers (so workers start without importing
#: torch/MONAI again, and share those pages copy-on-write)
PRELOAD = ["distributed", "numpy", "torch", "monai.networks.nets", "biomedseg.inference.predict"]


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, **kwargs):
    """A process-based ``LocalCluster`` whose workers are forked from a fork server that has
    already imported torch and MONAI (POSIX; elsewhere the default ``spawn``). Compared with
    spawned workers that each import torch, this starts several times faster on small machines."""
    import multiprocessing

    import dask
    from distributed import LocalCluster

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    kwargs.setdefault("dashboard_address", None)
    with dask.config.set({"distributed.worker.multiprocessing-method": method}):
        if method == "forkserver":
            try:
                from distributed.utils import get_mp_context

                get_mp_context().set_forkserver_preload(PRELOAD)  # after dask sets its own list
            except Exception:  # pragma: no cover - internal API moved: workers import on their own
                pass
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, **kwargs)


def _task(run_dir: str, path: str, out: str, device: str, checkpoint: str, threads: int | None,
          kwargs: dict) -> tuple[PredictSummary, int]:
    import os

    from biomedseg.inference.predict import predict

    if threads is None:
        try:  # one torch thread per dask worker thread: no oversubscription
            from distributed import get_worker

            threads = max(1, int(get_worker().state.nthreads))
        except Exception:
            threads = None
    loaded = _worker_run(run_dir, device, checkpoint, threads)
    summary = predict(loaded, [path], out, quiet=True, **kwargs)
    return summary, os.getpid()


def predict_distributed(run, inputs, out, *, client=None, address: str | None = None, n_workers: int = 2,
                        threads_per_worker: int = 1, device: str = "cpu", checkpoint: str = "best",
                        torch_threads: int | None = None, rle: str | Path | None = None, instances: bool = False,
                        overwrite: bool = False, quiet: bool = False, **predict_kwargs) -> PredictSummary:
    """Predict ``inputs`` (files, folders, globs) with run folder ``run`` on a Dask cluster.

    Args:
        client: a ``distributed.Client`` to use (not closed).
        address: scheduler address to connect to (when no ``client``).
        n_workers, threads_per_worker: of the ``LocalCluster`` started when neither is given.
        device: of the workers (``cpu`` | ``cuda`` | ``auto``).
        torch_threads: intra-op threads per worker (default: the worker's thread count).
        rle, instances, overwrite, **predict_kwargs: as :func:`~biomedseg.inference.predict.predict`.

    Returns the merged :class:`PredictSummary` (``summary.workers`` = distinct worker pids used).
    """
    try:
        from distributed import Client
    except ImportError:
        raise UserError('distributed prediction needs Dask: pip install "biomedseg[distributed]"') from None
    from biomedseg.inference.outputs import collect_inputs

    run_dir = open_run(Path(run).resolve()).root
    files = collect_inputs(inputs)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    todo = _not_done(files, out, overwrite, summary)
    kwargs = dict(predict_kwargs, instances=instances, overwrite=overwrite)
    pids: set[int] = set()
    own_cluster = own_client = None
    try:
        if client is None:
            if address is not None:
                client = own_client = Client(address)
            else:
                own_cluster = local_cluster(n_workers, threads_per_worker)
                client = own_client = Client(own_cluster)
        futures = [client.submit(_task, str(run_dir), str(f.resolve()), str(out), device, checkpoint, torch_threads,
                                 kwargs, key=f"biomedseg-predict-{i}-{f.name}", pure=False)
                   for i, f in enumerate(todo)]
        _gather(futures, todo, summary, pids)
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
    summary.workers = sorted(pids)
    if rle is not None:
        summary.rle = _write_rle_from_outputs(rle, run_dir, files, out, instances, predict_kwargs.get("mask_format"))
    if not quiet:
        log.info("%d predicted on %d workers, %d skipped, %d failed", len(summary.done), len(pids),
                 len(summary.skipped), len(summary.failed))
    return summary


def _not_done(files: list[Path], out: Path, overwrite: bool, summary: PredictSummary) -> list[Path]:
    """The files to predict; those with a finished mask in ``out`` go to ``summary.skipped``
    (unless ``overwrite``)."""
    from biomedseg.inference.outputs import existing_mask

    todo = []
    for f in files:
        if not overwrite and existing_mask(out, output_stem(f)) is not None:
            summary.skipped.append(f)
        else:
            todo.append(f)
    return todo


def _gather(futures: list, todo: list[Path], summary: PredictSummary, pids: set[int]) -> None:
    """Merge each finished task's summary into ``summary`` (worker pids into ``pids``); a task that
    raised is one failed file, logged once, and the others go on."""
    from distributed import as_completed

    by_key = {fut.key: f for fut, f in zip(futures, todo)}
    for fut in as_completed(futures):
        try:
            part, pid = fut.result()
        except UserError as exc:
            summary.failed.append((by_key[fut.key], str(exc)))
            log.error("%s", exc)
            continue
        except Exception as exc:  # a crashed worker or a bug: report the file, keep going
            summary.failed.append((by_key[fut.key], f"{type(exc).__name__}: {exc}"))
            log.error("%s: %s", by_key[fut.key], exc)
            continue
        summary.merge(part)
        pids.add(pid)


def _write_rle_from_outputs(rle, run_dir: Path, files: list[Path], out: Path, instances: bool,
                            mask_format: str | None = None) -> Path:
    """The RLE CSV of every input's mask written in ``out`` (workers write masks, not rows;
    ``mask_format``: the encoding they were written in)."""
    from biomedseg.inference.mask_outputs import mask_encoding_for
    from biomedseg.inference.predict import rle_rows_from_outputs, write_rle

    info_run = _InfoRun.from_dir(run_dir)
    encoding = mask_encoding_for(info_run, mask_format)
    rows = []
    for f in files:
        rows.extend(rle_rows_from_outputs(out, output_stem(f), info_run, instances, encoding))
    return write_rle(rle, rows, info_run, instances)


class _InfoRun:
    """The parts of a run the RLE writer needs (classes, background, dataset info for the mask
    encoding), without loading the model."""

    def __init__(self, classes, background, info=None):
        self.classes = classes
        self.background = background
        self.info = info

    @classmethod
    def from_dir(cls, run_dir: Path) -> "_InfoRun":
        info = open_run(run_dir).dataset()
        return cls(info.classes, info.background, info)
