"""The training input pipeline (issue 27): batches by (epoch, step) from a thread or worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomedseg.data.datasets import CachedSample, PatchSampler, index_class_pixels
from biomedseg.runtime.device import loader_workers
from biomedseg.training.loader import BatchLoader, BatchSource
from biomedseg.transforms.augment import build_preset
from biomedseg.transforms.normalize import Normalizer


def _source(seed=(0, 0), batch=2, patch=32) -> BatchSource:
    rng = np.random.default_rng(5)
    samples = []
    for i in range(3):
        image = rng.integers(0, 256, (80 + 10 * i, 90, 1), dtype=np.uint8)
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[10 + i : 14 + i, 20:25] = 1  # a rare class: oversampling centres patches on it
        samples.append(CachedSample(f"s{i}", image, mask, index_class_pixels(mask, 2, rng)))
    sampler = PatchSampler(samples, patch, 2, Normalizer([128.0], [64.0]), build_preset("default"), 0.5)
    return BatchSource(sampler, batch, seed)


def _take(loader: BatchLoader, epoch: int, n: int, start: int = 0, steps: int = 6) -> list:
    it = loader.epoch(epoch, steps, start)
    try:
        return [it.next() for _ in range(n)]
    finally:
        it.close()


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_same_seed_same_batches_from_the_thread_and_from_two_workers():
    thread = BatchLoader(_source(), 0)
    workers = BatchLoader(_source(), 2)
    try:
        by_thread = _take(thread, 0, 4) + _take(thread, 1, 2)
        by_workers = _take(workers, 0, 4) + _take(workers, 1, 2)  # the same workers serve both epochs
    finally:
        thread.close(), workers.close()
    assert _same(by_thread, by_workers)
    x, y = by_workers[0]
    assert x.dtype == torch.float32 and x.shape == (2, 1, 32, 32) and y.dtype == torch.int64
    assert not _same(by_thread[:1], by_thread[1:2]), "every step draws a new batch"
    assert not _same(by_thread[:2], by_thread[4:6]), "epochs differ"
    other = BatchLoader(_source(seed=(1, 0)), 0)
    try:
        assert not _same(_take(other, 0, 2), by_thread[:2]), "the seed matters"
    finally:
        other.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_started_mid_way_continues_like_the_uninterrupted_one(workers):
    loader = BatchLoader(_source(), workers)
    try:
        whole = _take(loader, 3, 5)
        resumed = _take(loader, 3, 2, start=3)
    finally:
        loader.close()
    assert _same(whole[3:5], resumed)


def test_an_epoch_left_early_does_not_leak_into_the_next():
    loader = BatchLoader(_source(), 2)
    try:
        _take(loader, 0, 1)  # the budget ended epoch 0 after one step; workers had queued more
        after = _take(loader, 1, 3)
    finally:
        loader.close()
    fresh = BatchLoader(_source(), 0)
    try:
        assert _same(after, _take(fresh, 1, 3))
    finally:
        fresh.close()


def test_rare_class_oversampling_is_kept():
    loader = BatchLoader(_source(batch=8), 2)
    try:
        batches = _take(loader, 0, 4, steps=4)
    finally:
        loader.close()
    share = np.mean([bool((y == 1).any()) for _, ys in batches for y in ys])
    assert share >= 0.35  # fg_oversample 0.5 centres about half the patches on the 20-pixel class


def test_default_worker_count_per_device(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(32)), raising=False)
    assert loader_workers(None, torch.device("cpu")) == 0
    assert loader_workers(None, torch.device("cuda")) == 12
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(4)), raising=False)
    assert loader_workers(None, torch.device("cuda")) == 3
    assert loader_workers(5, torch.device("cpu")) == 5


@pytest.mark.slow
def test_training_with_two_workers_ends_with_the_weights_of_the_thread(synthetic_data, tmp_path):
    from biomedseg.runs import load_checkpoint
    from biomedseg.training.api import train
    from conftest import TINY

    tiny = {**TINY, "iterations_per_epoch": 3}
    runs = {
        w: train(synthetic_data, tmp_path / f"w{w}", epochs=2, seed=4, quiet=True, num_workers=w, **tiny)
        for w in (0, 2)
    }
    a, b = (load_checkpoint(runs[w] / "checkpoints" / "last.pt")["model"] for w in (0, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_daemonic_process_gets_the_thread_instead_of_workers(monkeypatch, caplog):
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    loader = BatchLoader(_source(), 2)
    try:
        assert loader.num_workers == 0 and "batches come from a thread" in caplog.text
        assert _same(_take(loader, 0, 2), _take(BatchLoader(_source(), 0), 0, 2))
    finally:
        loader.close()
