"""Time budget: how long ``train --time-budget B`` really takes, against a run's fixed cost.

    python benchmarks/time_budget.py [--budget 6] [--rounds 3] [--threads 2]

On a tiny synthetic dataset (10 training images of 64x96, the test suite's TINY settings).
A: ``train(time_budget=B)``, wall clock of the whole call, and the training time the trainer
itself counted (``elapsed`` in ``last.pt``). Reference, measured in the same run: the same call
with one epoch of one step, i.e. what a run costs around its training (reading the data,
building the model, one validation, writing the run folder). The sides are interleaved
(A B A B ...) and medians reported. ``ratio`` = A's wall time / (B + the reference's wall time):
about 1 when the budget is kept and nothing but the fixed cost comes on top of it. ``elapsed``
is checked against B + 1.5 s (the overshoot the unit test used to allow). Prints one RESULT
line last.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

TINY = {
    "model_kwargs": {"depth": 3, "base_channels": 8, "num_res_units": 0},
    "patch_size": 64,
    "batch_size": 4,
    "iterations_per_epoch": 6,
}
OVERSHOOT_S = 1.5  # allowed training time past the budget


def timed_run(data: Path, run: Path, threads: int, **kwargs) -> tuple[float, float]:
    """Wall seconds of one ``train`` call and the training seconds stored in its ``last.pt``."""
    from biomedseg.runs import load_checkpoint
    from biomedseg.training.api import train

    t0 = time.perf_counter()
    out = train(data, run, seed=0, quiet=True, num_threads=threads, **{**TINY, **kwargs})
    wall = time.perf_counter() - t0
    return wall, float(load_checkpoint(out / "checkpoints" / "last.pt")["elapsed"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budget", type=float, default=6.0, help="seconds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from biomedseg.data.synthetic import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_synthetic_dataset(work / "data", n_train=10, n_test=4, size=(64, 96), seed=1)
        timed_run(data, work / "warmup", args.threads, epochs=1, iterations_per_epoch=1)  # imports, caches
        budgeted, elapsed, reference = [], [], []
        for i in range(args.rounds):  # interleaved
            wall, spent = timed_run(data, work / f"budget{i}", args.threads, time_budget=f"{args.budget}s")
            budgeted.append(wall)
            elapsed.append(spent)
            reference.append(timed_run(data, work / f"ref{i}", args.threads, epochs=1, iterations_per_epoch=1)[0])
            print(
                f"round {i + 1}: budgeted run {wall:.2f} s (trainer counted {spent:.2f} s), "
                f"one-step run {reference[-1]:.2f} s"
            )
    wall, spent, fixed = (statistics.median(v) for v in (budgeted, elapsed, reference))
    ratio = wall / (args.budget + fixed)
    ok = "OK" if spent <= args.budget + OVERSHOOT_S else "OVER"
    print(
        f"RESULT time_budget budget={args.budget:g}s rounds={args.rounds} threads={args.threads} "
        f"wall={wall:.2f}s elapsed={spent:.2f}s (limit {args.budget + OVERSHOOT_S:g}s {ok}) "
        f"one_step_run={fixed:.2f}s ratio={ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
