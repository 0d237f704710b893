"""Prediction of many files on a Dask cluster (``pip install "biomedseg[distributed]"``).

One task per input file. Each worker process loads the run (a run folder or an exported file)
**once** (a per-process cache keyed by source, device, checkpoint and engine, filled on the
worker's first task) and builds the predictor (the network's inference copy, compiled or not)
once per worker thread; every task then predicts its file with
:func:`biomedseg.inference.predict.batch.predict_files` into the shared output folder, so
everything ``predict`` does (atomic writes, mask written last, skipping finished files, streaming of
huge inputs, post-processing, a failed input reported) holds per task. Each task runs torch with
its share of the worker's cores (:func:`biomedseg.runtime.cluster.plan_task_threads`) unless
``threads`` is given. Finished files are skipped *before* submitting, so a
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

from biomedseg.core.errors import UserError
from biomedseg.inference.predict.batch import PredictSummary
from biomedseg.inference.predict.options import PredictOptions
from biomedseg.inference.predict.outputs import output_stem
from biomedseg.runs import open_run
from biomedseg.runtime.cluster import connect, local_cluster, run_jobs, task_threads, task_threads_by_worker  # noqa: F401 (local_cluster: API)

log = logging.getLogger("biomedseg")

_RUNS: dict = {}  # (source, device, checkpoint, engine) -> loaded run, once per worker process
_PREPARED: dict = {}  # (run key, options, worker thread) -> batch.Prepared (the predictor built once)
_LOCK = threading.Lock()


def _worker_prepared(source: str, options: PredictOptions, files: list[Path], out: Path, hooks=None):
    """The run loaded once per worker process, and made ready (predictor, compiled or not; ``hooks``
    as in :func:`~.batch.prepare`) once per worker thread for ``options``; later tasks reuse both."""
    from biomedseg.inference.exported.engines import open_model_source
    from biomedseg.inference.predict.batch import prepare

    run_key = (source, options.device, options.checkpoint, options.engine)
    key = (run_key, options.replace(overwrite=False, quiet=True, threads=None), threading.get_ident(), hooks)
    with _LOCK:
        if run_key not in _RUNS:
            _RUNS[run_key] = open_model_source(
                source, device=options.device, engine=options.engine, checkpoint=options.checkpoint
            )
        if key not in _PREPARED:  # one per worker thread: a predictor keeps per-image state
            _PREPARED[key] = prepare(_RUNS[run_key], options, files, out, hooks)
        return _PREPARED[key]


def loaded_runs() -> int:
    """How many runs this process has loaded (1 per worker after any number of tasks)."""
    return len(_RUNS)


def prepared_predictors() -> int:
    """How many predictors this process has built (1 per worker thread after any number of tasks)."""
    return len(_PREPARED)


def _task(
    source: str, path: str, out: str, options: PredictOptions, plan: dict[str, int], hooks=None
) -> tuple[PredictSummary, int, int, str]:
    """One file in a worker: ``(summary, pid, torch threads, engine)``; ``hooks``: a module-level
    factory (pickled by name), whose rows come back in the summary."""
    import os

    from biomedseg.inference.predict.batch import predict_files
    from biomedseg.runtime.device import configure_threads

    threads = configure_threads(options.threads or task_threads(plan))
    prepared = _worker_prepared(source, options.replace(quiet=True), [Path(path)], Path(out), hooks)
    summary = predict_files(prepared, [Path(path)], Path(out))
    return summary, os.getpid(), threads, _engine_of(prepared.run)


def _engine_of(loaded) -> str:
    from biomedseg.inference.exported.engines import ExportedNetwork

    return loaded.model.engine if isinstance(loaded.model, ExportedNetwork) else "torch"


def predict_distributed(
    run,
    inputs,
    out,
    options: PredictOptions | None = None,
    *,
    client=None,
    address=None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    hooks=None,
    **keywords,
) -> PredictSummary:
    """Predict ``inputs`` (files, folders, globs) with ``run`` (a run, CV or ensemble folder, or an
    exported ``.onnx``/``.pt``/``.zip`` file) on a Dask cluster.

    Args:
        options, **keywords: as :func:`~biomedseg.inference.predict.batch.predict` (``device``
            default ``auto``, ``engine``, ``checkpoint``, ``rle``, ``threads``, ...); ``threads``:
            torch threads per task (default: the worker's cores divided by the tasks running at
            once on them: :func:`~biomedseg.runtime.cluster.plan_task_threads`).
        client: a ``distributed.Client`` to use (not closed).
        address: any ``scheduler`` of :func:`biomedseg.runtime.cluster.connect` (when no ``client``).
        n_workers, threads_per_worker: of the ``LocalCluster`` started when neither is given.
        hooks: as in :func:`~biomedseg.inference.predict.batch.predict`, run in the tasks (a
            module-level factory); their rows come back in ``summary.rows``.

    Returns the merged :class:`PredictSummary` (``summary.workers`` = distinct worker pids used,
    ``summary.task_threads`` the torch threads of the tasks, ``summary.engines`` their runtimes).
    """
    from biomedseg.inference.exported.engines import check_engine, is_export
    from biomedseg.inference.predict.outputs import OUTPUT_FORMATS, collect_inputs

    options = PredictOptions.of(options, **keywords)
    if options.engine is not None:
        check_engine(options.engine)
    if options.output_format is not None and options.output_format not in OUTPUT_FORMATS:
        raise UserError(f"--format {options.output_format}: choose one of {', '.join(OUTPUT_FORMATS)}")
    source = _source(run, is_export)
    files = collect_inputs(inputs)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    todo = _not_done(files, out, options.overwrite, summary)
    task_options = options.replace(rle=None, quiet=True)  # the client writes the RLE CSV
    with _cluster(client, address, n_workers, threads_per_worker) as c:
        plan = task_threads_by_worker(c) if options.threads is None and todo else {}
        jobs = [
            (f"predict-{i}-{f.name}", (source, str(f.resolve()), str(out), task_options, plan, hooks))
            for i, f in enumerate(todo)
        ]
        results, failed = run_jobs(c, _task, jobs, quiet=options.quiet, what="files")
    _merge(summary, jobs, todo, results, failed)
    if options.rle is not None:
        summary.rle = _write_rle_from_outputs(options, source, files, out)
    if not options.quiet:
        log.info(
            "%d predicted on %d workers (%s; torch threads per task: %s), %d skipped, %d failed",
            len(summary.done),
            len(summary.workers),
            ", ".join(summary.engines) or "-",
            ", ".join(map(str, summary.task_threads)) or "-",
            len(summary.skipped),
            len(summary.failed),
        )
    return summary


def _source(run, is_export) -> str:
    """The absolute path of a run folder (checked here, before any task) or an exported file."""
    from biomedseg.inference.exported.options import SUFFIXES

    path = Path(run).resolve()
    if is_export(path):
        return str(path)
    if path.suffix.lower() in SUFFIXES.values() and not path.exists():
        raise UserError(f"{run}: no such file")
    return str(open_run(path).root)


def _merge(summary: PredictSummary, jobs, todo, results: dict, failed: list) -> None:
    by_label = {label: f for (label, _), f in zip(jobs, todo)}
    summary.failed.extend((by_label[label], message) for label, message in failed)
    for part, _pid, _threads, _engine in results.values():
        for _f, message in part.failed:  # the worker's log stays on the worker: say it here
            log.error("%s", message)
        summary.merge(part)
    summary.workers = sorted({r[1] for r in results.values()})
    summary.task_threads = sorted({r[2] for r in results.values()})
    summary.engines = sorted({r[3] for r in results.values()})


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


def _write_rle_from_outputs(options: PredictOptions, source: str, files: list[Path], out: Path) -> Path:
    """The RLE CSV of every input's mask written in ``out`` (workers write masks, not rows; in
    the encoding of ``options.mask_format``)."""
    from biomedseg.inference.predict.mask_outputs import mask_encoding_for
    from biomedseg.inference.predict.rle import rle_rows_from_outputs, write_rle

    info_run = _InfoRun.of(source, options)
    encoding = mask_encoding_for(info_run, options.mask_format)
    rows = []
    for f in files:
        rows.extend(rle_rows_from_outputs(out, output_stem(f), info_run, options.instances, encoding))
    return write_rle(options.rle, rows, info_run, options.instances)


class _InfoRun:
    """The parts of a run the RLE writer needs (classes, background, dataset info for the mask
    encoding), without loading the model of a run folder."""

    def __init__(self, classes, background, info=None):
        self.classes = classes
        self.background = background
        self.info = info

    @classmethod
    def of(cls, source: str, options: PredictOptions) -> "_InfoRun":
        from biomedseg.inference.exported.engines import is_export, open_model_source

        if is_export(source):  # the classes live in the file's metadata
            info = open_model_source(source, device="cpu", engine=options.engine).info
        else:
            info = open_run(source).dataset()
        return cls(info.classes, info.background, info)
