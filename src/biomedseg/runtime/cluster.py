"""Independent jobs on a Dask cluster: batch prediction files, CV folds, sweep trials.

``pip install "biomedseg[distributed]"``. One way to name a cluster everywhere (``--scheduler``
of ``cv``, ``sweep`` and ``predict``, ``scheduler=`` in Python):

- ``"tcp://host:8786"`` (any Dask address): an existing scheduler, e.g. ``dask scheduler`` on a
  head node with ``dask worker`` processes, or ``dask-jobqueue``'s ``SLURMCluster``;
- a path to a scheduler file (``dask scheduler --scheduler-file F``, the usual HPC handshake);
- ``"local"`` or ``"local:N"``: a ``LocalCluster`` of N worker processes (default 2), one thread
  each, started for the call and stopped after it;
- a ``distributed.Client`` object (Python only; left open).

Jobs are ordinary functions submitted with :func:`run_jobs`: each runs in a worker process, a job
that raises is reported (``failed``) and the others go on. Each job sets its own torch thread
count from the worker's (:func:`worker_threads`), so workers do not oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path

from biomedseg.core.errors import UserError

log = logging.getLogger("biomedseg")

#: worker processes of ``--scheduler local`` when no ``:N`` is given
DEFAULT_LOCAL_WORKERS = 2
#: imported once by the fork server that forks local workers (they then start without importing
#: torch/MONAI again and share those pages copy-on-write)
PRELOAD = ["distributed", "numpy", "torch", "monai.networks.nets", "biomedseg.inference.predict.batch"]


def require_distributed():
    """The ``distributed`` module, or a one-line :class:`UserError` naming the install command."""
    try:
        import distributed
    except ImportError:
        raise UserError('running on a Dask cluster needs Dask: pip install "biomedseg[distributed]"') from None
    return distributed


def local_cluster(n_workers: int = DEFAULT_LOCAL_WORKERS, threads_per_worker: int = 1, **kwargs):
    """A process-based ``LocalCluster`` whose workers are forked from a fork server that has
    already imported torch and MONAI (POSIX; elsewhere the default ``spawn``). Compared with
    spawned workers that each import torch, this starts several times faster on small machines."""
    import multiprocessing

    import dask

    distributed = require_distributed()
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    kwargs.setdefault("dashboard_address", None)
    with dask.config.set({"distributed.worker.multiprocessing-method": method}):
        if method == "forkserver":
            try:
                from distributed.utils import get_mp_context

                get_mp_context().set_forkserver_preload(PRELOAD)  # after dask sets its own list
            except Exception:  # pragma: no cover - internal API moved: workers import on their own
                pass
        return distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, **kwargs
        )


def parse_local(scheduler: str) -> int | None:
    """Workers of ``"local"`` / ``"local:N"`` (``None``: not a local-cluster spec)."""
    text = scheduler.strip().lower()
    if text == "local":
        return DEFAULT_LOCAL_WORKERS
    if not text.startswith("local:"):
        return None
    n = text.split(":", 1)[1]
    if not n.isdigit() or int(n) < 1:
        raise UserError(f"--scheduler {scheduler}: expected local:N with N >= 1 workers")
    return int(n)


@contextlib.contextmanager
def connect(scheduler, threads_per_worker: int = 1):
    """``with connect(scheduler) as client``: a ``distributed.Client`` for any form in the module
    docstring (``threads_per_worker``: of a ``local[:N]`` cluster); what this call started (a
    client, a local cluster) is closed on exit."""
    distributed = require_distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    text = str(scheduler)
    n_local = parse_local(text)
    with contextlib.ExitStack() as stack:
        if n_local is not None:
            cluster = stack.enter_context(local_cluster(n_local, threads_per_worker))
            client = stack.enter_context(distributed.Client(cluster))
        elif Path(text).is_file():
            client = stack.enter_context(_client(distributed, scheduler_file=text))
        elif "://" in text or ":" in text:
            client = stack.enter_context(_client(distributed, text))
        else:
            raise UserError(
                f"--scheduler {text}: not a scheduler address (tcp://host:port), a scheduler file, or local[:N]"
            )
        yield client


def _client(distributed, address=None, **kwargs):
    try:
        return distributed.Client(address, timeout="30s", **kwargs)
    except (OSError, TimeoutError) as exc:
        where = address or kwargs.get("scheduler_file")
        raise UserError(f"--scheduler {where}: cannot reach the Dask scheduler ({exc})") from None


def n_workers(client) -> int:
    """Workers the cluster has now (at least 1: jobs queue until one joins)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def worker_threads() -> int | None:
    """Threads of the Dask worker running this code (``None`` outside a worker)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except Exception:
        return None


def process_cores() -> tuple[str, tuple[int, ...]]:
    """``(host name, CPU ids this process may run on)``."""
    import os
    import socket

    try:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = tuple(range(os.cpu_count() or 1))
    return socket.gethostname(), cpus


def plan_task_threads(cores: dict[str, tuple[str, tuple[int, ...]]], nthreads: dict[str, int]) -> dict[str, int]:
    """``{worker address: torch threads per task}`` = the cores a worker may use divided by the
    tasks that run at once on those cores: the thread counts of every worker on the same host with
    the same CPUs (``cores``: each worker's :func:`process_cores`; ``nthreads``: its Dask threads),
    at least 1. E.g. on 8 cores, one worker of 8 threads runs 8 tasks at once: 1 thread each (its
    thread count each would be 8 x 8 = 64 threads); two workers of 1 thread: 4 threads each."""
    running: dict[tuple, int] = {}
    for address, key in cores.items():
        running[key] = running.get(key, 0) + max(1, int(nthreads.get(address, 1)))
    return {address: max(1, len(key[1]) // running[key]) for address, key in cores.items()}


def task_threads_by_worker(client) -> dict[str, int]:
    """:func:`plan_task_threads` of the cluster's workers now (``{}`` when it cannot be asked)."""
    try:
        return plan_task_threads(client.run(process_cores), client.nthreads())
    except Exception as exc:  # noqa: BLE001 - a worker that went away: the tasks fall back to their own count
        log.debug("cannot ask the workers for their cores (%s)", exc)
        return {}


def task_threads(plan: dict[str, int] | None = None) -> int | None:
    """Torch threads for the Dask task running this code: its worker's entry of ``plan``
    (:func:`task_threads_by_worker`), else this process's cores divided by its worker's thread
    count; ``None`` outside a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except Exception:
        return None
    if plan and worker.address in plan:
        return plan[worker.address]
    return max(1, len(process_cores()[1]) // max(1, int(worker.state.nthreads)))


def with_worker_threads(options: dict) -> dict:
    """Training ``options`` with ``num_threads`` = the worker's thread count, unless already set."""
    threads = worker_threads()
    if threads and options.get("num_threads") is None:
        return {**options, "num_threads": threads}
    return options


def run_jobs(client, fn, jobs: list[tuple[str, tuple]], *, quiet: bool = False, what: str = "jobs"):
    """Run ``fn(*args)`` for each ``(label, args)`` of ``jobs`` as a task; returns ``(results,
    failed)``: ``{label: result}`` of those that returned and ``[(label, message)]`` of those that
    raised (a :class:`UserError`'s message as is), in completion order. Logs each failure once."""
    from distributed import as_completed
    from tqdm import tqdm

    token = uuid.uuid4().hex[:8]
    futures = {client.submit(fn, *args, key=f"biomedseg-{label}-{token}", pure=False): label for label, args in jobs}
    results, failed = {}, []
    with tqdm(total=len(futures), desc=what, unit="job", disable=quiet or not futures) as bar:
        for fut in as_completed(list(futures)):
            label = futures[fut]
            try:
                results[label] = fut.result()
            except UserError as exc:
                failed.append((label, str(exc)))
                log.error("%s: %s", label, exc)
            except Exception as exc:  # a crashed worker or a bug: report the job, keep going
                failed.append((label, f"{type(exc).__name__}: {exc}"))
                log.error("%s: %s: %s", label, type(exc).__name__, exc)
            bar.update()
    return results, failed
