"""What the trust outputs of issue 22 cost: ``RUN/trust.json`` at the end of ``train``, and
``predictions.csv`` / out-of-distribution scores / ``--uncertainty`` maps in ``predict``.

On the demo's synthetic data (24 training/validation + 8 test images of 256x256, the demo's network
configuration) a run is trained for ``--budget`` (the description does not depend on how long);
then, in one process after a warm-up:

- ``describe_run`` (what ``train`` adds) timed ``--repeats`` times;
- ``predict`` of all 32 images three ways, interleaved (A B C A B C ...): the plain batch
  (``inference.predict.batch.predict``, no hooks), ``biomedseg.predict`` (rows + OOD scores), and
  ``biomedseg.predict(uncertainty=True)``.

    python benchmarks/trust_cost.py                    # 1 torch thread, 2 repeats
    python benchmarks/trust_cost.py --threads 2

The last line is the single result line (seconds; every repeat listed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _train(root: Path, budget: str) -> Path:
    import biomedseg
    from biomedseg.data.synthetic import make_synthetic_dataset
    from biomedseg.workflows.demo import DEMO_CONFIG

    data = make_synthetic_dataset(root / "data", n_train=24, n_test=8, size=(256, 256), seed=0)
    return biomedseg.train(data, root / "run", time_budget=budget, seed=0, quiet=True, **DEMO_CONFIG)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    import torch

    import biomedseg
    from biomedseg.inference.predict.batch import predict as plain
    from biomedseg.workflows.training import describe_run

    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="30s")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = _train(root, a.budget)
        torch.set_num_threads(a.threads)
        files = [str(p) for p in sorted((root / "data" / "images").glob("*.png"))]
        kw = dict(quiet=True, compile="off", threads=a.threads, overlays=False, overwrite=True)
        plain(run, files[:2], root / "warm", **kw)
        sides = {
            "plain": lambda o: plain(run, files, o, **kw),
            "rows_ood": lambda o: biomedseg.predict(run, files, o, **kw),
            "rows_ood_uncertainty": lambda o: biomedseg.predict(run, files, o, uncertainty=True, **kw),
        }
        times: dict[str, list[float]] = {k: [] for k in ["describe", *sides]}
        for r in range(a.repeats):
            times["describe"].append(_timed(lambda: describe_run(run)))
            for name, fn in sides.items():
                out = root / f"{name}_{r}"
                times[name].append(_timed(lambda fn=fn, out=out: fn(out)))
    fields = " ".join(f"{k}_s={','.join(f'{x:.1f}' for x in v)}" for k, v in times.items())
    print(f"RESULT trust_cost images={len(files)} size=256 threads={a.threads} {fields}")


if __name__ == "__main__":
    main()
