"""Training batches by key: the same batches from the background thread or from worker processes.

Batch ``step`` of ``epoch`` is drawn with its own generator, seeded by ``(seed, rank, epoch,
step)`` (:class:`BatchSource`), so a batch does not depend on which thread or process made it nor
on the batches before it: a seeded run gives the same batches with 0, 1 or 12 workers, and an epoch
can start at any step (resume mid-epoch) and continue exactly as the uninterrupted run would.

- ``num_workers == 0``: one background thread (:class:`Prefetcher`), the CPU default: there the
  step is the limit and worker processes only compete with its threads (measured:
  benchmarks/RESULTS.md, issue 27).
- ``num_workers > 0``: a torch ``DataLoader`` over that many persistent worker processes (started
  once per ``fit``, reused across epochs), each making whole batches; pinned batches on CUDA. On
  Linux the workers are forked, so the decoded images are shared copy-on-write with the training
  process, not copied per worker (they are only read).

Rare-class oversampling is the :class:`~biomedseg.data.datasets.PatchSampler`'s, unchanged.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

import numpy as np

from biomedseg.data.datasets import PatchSampler

log = logging.getLogger("biomedseg")


class BatchSource:
    """Map-style dataset: ``source[(epoch, step)]`` -> ``x (B, C, P, P) float32, y (B, P, P) int64``
    (numpy), drawn by ``sampler`` with the generator of ``(*seed, epoch, step)``."""

    def __init__(self, sampler: PatchSampler, batch_size: int, seed: Sequence[int]):
        self.sampler, self.batch_size, self.seed = sampler, int(batch_size), [int(s) for s in seed]

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        epoch, step = key
        self.sampler.rng = np.random.default_rng([*self.seed, int(epoch), int(step)])
        return self.sampler.batch(self.batch_size)


class Prefetcher:
    """Builds batches in a background thread (numpy releases the GIL) so the model never waits.

    Batches come out in the order they were made, so a seeded run stays reproducible. They come out
    as torch tensors, ``(N, C, H, W) float32`` images and ``(N, H, W) int64`` masks; with
    ``pin_memory`` (CUDA) they are page-locked in the thread, so ``.to(cuda, non_blocking=True)``
    overlaps the copy with the running step.
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, depth: int = 2, pin_memory: bool = False):
        self.sampler, self.batch_size, self.pin_memory = sampler, batch_size, pin_memory
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None  # what ended the thread, raised by next()
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self):
        try:
            self._produce()
        except BaseException as exc:  # noqa: BLE001 - the thread ends; next() raises it in the caller
            self._error = exc

    def _produce(self):
        import torch

        while not self._stop.is_set():
            try:
                item = tuple(torch.from_numpy(a) for a in self.sampler.batch(self.batch_size))
                if self.pin_memory:
                    item = tuple(t.pin_memory() for t in item)
            except Exception as exc:  # surfaced in the main thread
                item = exc
            while not self._stop.is_set():
                try:
                    self.q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def next(self):
        """The next batch; an error of the thread is raised here, also one that ended it (never a
        wait for a thread that is gone)."""
        while True:
            try:
                item = self.q.get(timeout=0.1)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.q.empty():
                    if self._error is not None:
                        raise self._error from None
                    raise RuntimeError("the batch thread has stopped (the Prefetcher was closed)") from None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        self._stop.set()
        self.thread.join(timeout=5)


class _EpochSteps:
    """What the thread path's :class:`Prefetcher` consumes: ``batch()`` returns the batches of one
    epoch in step order, from ``start``."""

    def __init__(self, source: BatchSource, epoch: int, start: int):
        self.source, self.epoch, self.step = source, epoch, start

    def batch(self, _n: int | None = None):
        item = self.source[(self.epoch, self.step)]
        self.step += 1
        return item


class _EpochKeys:
    """The DataLoader's sampler: the keys ``(epoch, step)`` of the current epoch (set by the loader)."""

    def __init__(self):
        self.epoch, self.start, self.stop = 0, 0, 0

    def __iter__(self):
        return iter([(self.epoch, s) for s in range(self.start, self.stop)])

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class _LoaderEpoch:
    """One epoch's batches from the worker processes (``next()``/``close()`` like a Prefetcher)."""

    def __init__(self, iterator):
        self.iterator = iterator

    def next(self):
        return next(self.iterator)

    def close(self):  # the workers persist; the next epoch's iterator drops what is still queued
        pass


class BatchLoader:
    """Batches of ``source`` for one ``fit``: :meth:`epoch` returns an object with ``next()`` and
    ``close()``; :meth:`close` stops the worker processes (if any)."""

    def __init__(self, source: BatchSource, num_workers: int = 0, pin_memory: bool = False, depth: int = 2):
        import multiprocessing

        if num_workers and multiprocessing.current_process().daemon:  # e.g. a Dask worker: no child processes
            log.warning("num_workers=%d: this process may not start workers; batches come from a thread", num_workers)
            num_workers = 0
        self.source, self.num_workers, self.pin_memory, self.depth = source, int(num_workers), pin_memory, depth
        self._keys = _EpochKeys()
        self._loader = None

    def _dataloader(self):
        from torch.utils.data import DataLoader

        if self._loader is None:
            self._loader = DataLoader(
                self.source,
                batch_size=None,  # every item is a whole batch (numpy arrays -> tensors)
                sampler=self._keys,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=True,
                prefetch_factor=self.depth,
            )
        return self._loader

    def epoch(self, epoch: int, steps: int, start: int = 0):
        """The batches of steps ``start .. steps - 1`` of ``epoch``."""
        if self.num_workers == 0:
            return Prefetcher(
                _EpochSteps(self.source, epoch, start), self.source.batch_size, self.depth, self.pin_memory
            )
        self._keys.epoch, self._keys.start, self._keys.stop = epoch, start, steps
        return _LoaderEpoch(iter(self._dataloader()))

    def close(self) -> None:
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader = None
