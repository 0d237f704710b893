"""Prediction of many files on a Dask cluster (``pip install "biomedseg[distributed]"``).

One task per input file. Each worker process loads the run **once** (a per-process cache keyed
by run folder, device and checkpoint, filled on the worker's first task) and then predicts with
:func:`biomedseg.inference.predict.batch.predict` into the shared output folder, so everything
``predict`` does (atomic writes, mask written last, skipping finished files, streaming of huge
inputs, post-processing) holds per task. Finished files are skipped *before* submitting, so a
re-run after an interruption only submits what is missing. The RLE CSV, if asked for, is
written at the end by the client from the masks on disk.

The cluster: an existing ``distributed.Client``, or any ``scheduler`` of
:func:`biomedseg.runtime.cluster.connect` (an address, a scheduler file, ``local:N``); without either a
``LocalCluster`` of ``n_workers`` is started for the call. The output
folder must be visible to every worker (shared file system). See ``docs/distributed.md``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from biomedseg.runtime.cluster import connect, local_cluster, run_jobs, worker_threads  # noqa: F401 (local_cluster: API)
from biomedseg.core.errors import UserError
from biomedseg.runs import open_run
from biomedseg.inference.predict.outputs import output_stem
from biomedseg.inference.predict.batch import PredictSummary

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


def _task(run_dir: str, path: str, out: str, device: str, checkpoint: str, threads: int | None,
          kwargs: dict) -> tuple[PredictSummary, int]:
    import os

    from biomedseg.inference.predict.batch import predict

    if threads is None:  # one torch thread per dask worker thread: no oversubscription
        threads = worker_threads()
    loaded = _worker_run(run_dir, device, checkpoint, threads)
    summary = predict(loaded, [path], out, quiet=True, **kwargs)
    return summary, os.getpid()


def predict_distributed(run, inputs, out, *, client=None, address=None, n_workers: int = 2,
                        threads_per_worker: int = 1, device: str = "cpu", checkpoint: str = "best",
                        torch_threads: int | None = None, rle: str | Path | None = None, instances: bool = False,
                        overwrite: bool = False, quiet: bool = False, **predict_kwargs) -> PredictSummary:
    """Predict ``inputs`` (files, folders, globs) with run folder ``run`` on a Dask cluster.

    Args:
        client: a ``distributed.Client`` to use (not closed).
        address: any ``scheduler`` of :func:`biomedseg.runtime.cluster.connect` (when no ``client``).
        n_workers, threads_per_worker: of the ``LocalCluster`` started when neither is given.
        device: of the workers (``cpu`` | ``cuda`` | ``auto``).
        torch_threads: intra-op threads per worker (default: the worker's thread count).
        rle, instances, overwrite, **predict_kwargs: as :func:`~biomedseg.inference.predict.batch.predict`.

    Returns the merged :class:`PredictSummary` (``summary.workers`` = distinct worker pids used).
    """
    from biomedseg.inference.predict.outputs import collect_inputs

    run_dir = open_run(Path(run).resolve()).root
    files = collect_inputs(inputs)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    todo = _not_done(files, out, overwrite, summary)
    kwargs = dict(predict_kwargs, instances=instances, overwrite=overwrite)
    with _cluster(client, address, n_workers, threads_per_worker) as c:
        jobs = [(f"predict-{i}-{f.name}", (str(run_dir), str(f.resolve()), str(out), device, checkpoint,
                                           torch_threads, kwargs)) for i, f in enumerate(todo)]
        results, failed = run_jobs(c, _task, jobs, quiet=quiet, what="files")
    by_label = {label: f for (label, _), f in zip(jobs, todo)}
    summary.failed.extend((by_label[label], message) for label, message in failed)
    for part, _pid in results.values():
        for _f, message in part.failed:  # the worker's log stays on the worker: say it here
            log.error("%s", message)
        summary.merge(part)
    summary.workers = sorted({pid for _part, pid in results.values()})
    if rle is not None:
        summary.rle = _write_rle_from_outputs(rle, run_dir, files, out, instances, predict_kwargs.get("mask_format"))
    if not quiet:
        log.info("%d predicted on %d workers, %d skipped, %d failed", len(summary.done), len(summary.workers),
                 len(summary.skipped), len(summary.failed))
    return summary


def _cluster(client, address, n_workers: int, threads_per_worker: int):
    """The given client, a connection to ``address``, or a local cluster started for the call."""
    scheduler = client if client is not None else address if address is not None else f"local:{n_workers}"
    return connect(scheduler, threads_per_worker)


def _not_done(files: list[Path], out: Path, overwrite: bool, summary: PredictSummary) -> list[Path]:
    """The files to predict; those with a finished mask in ``out`` go to ``summary.skipped``
    (unless ``overwrite``)."""
    from biomedseg.inference.predict.outputs import existing_mask

    todo = []
    for f in files:
        if not overwrite and existing_mask(out, output_stem(f)) is not None:
            summary.skipped.append(f)
        else:
            todo.append(f)
    return todo


def _write_rle_from_outputs(rle, run_dir: Path, files: list[Path], out: Path, instances: bool,
                            mask_format: str | None = None) -> Path:
    """The RLE CSV of every input's mask written in ``out`` (workers write masks, not rows;
    ``mask_format``: the encoding they were written in)."""
    from biomedseg.inference.predict.mask_outputs import mask_encoding_for
    from biomedseg.inference.predict.rle import rle_rows_from_outputs, write_rle

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
