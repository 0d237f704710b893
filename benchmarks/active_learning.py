"""Active learning: images chosen by ``suggest`` against images chosen at random (issue 22).

    python benchmarks/active_learning.py [--datasets hc18_fetal_head,dsb2018_nuclei] [--budget-s 45 | --steps N]
                                         [--rounds 3] [--step 0.1] [--seeds 0,1,2] [--out DIR] [--smoke]

For each dataset (``dataset.json``'s train split; the test split only scores):

* round 0: ``--step`` of the training images, drawn with ``--start-seed``, labelled; ``biomedseg.train``
  on them (shared by both arms);
* rounds 1..``--rounds``: each adds ``--step`` of the training images, chosen either by ``suggest``
  (the function ``biomedseg suggest`` calls; the previous round's run, pool = the unlabelled rest of the
  training split, ``--exclude`` the labelled folder) or at random (one arm per ``--seeds`` entry);
  every round trains **from scratch** on the labelled images at the same ``--budget-s``;
* reference: the same training on all training images at the same budget.

``--steps N`` gives every run N optimizer steps instead of ``--budget-s`` seconds: on a shared, loaded
machine a time budget buys each run a different number of steps (the table lists them), which can
outweigh which images were labelled.

Every run is scored with ``biomedseg.evaluate`` on the test split (pooled foreground Dice). Each labelled
set is a folder of symlinks (``images/``, ``masks/``, ``dataset.json`` naming the ids as its train split)
under ``--out`` (a new temporary folder by default, outside the repository); nothing of the shared data
is copied. Prints a markdown table and ``RESULT`` lines, writes ``active_learning.png`` (Dice vs
labelled fraction) and ``results.json`` to ``--out``; finished runs in ``--out`` are reused.
``--smoke``: dsb2018_nuclei, one round, one random seed, 4-second budgets (a check that it runs).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
#: one data set of large objects (one head per image), one of many small ones (nuclei)
DATASETS = "hc18_fetal_head,dsb2018_nuclei"
#: training seconds per run: 14 runs a data set (1 + 3 suggest + 9 random + 1 reference), plus ~20 s of
#: setup per run, the scoring (~20 s per hc18 run) and ``suggest`` (~45 s per hc18 round), took 50 minutes
#: of wall time for the two data sets on the 2-core machine at load 7-10 (benchmarks/RESULTS.md, issue 22)
DEFAULT_BUDGET_S = 45.0
#: Dice margin of "as good as training on all images" (the issue's target)
FULL_MARGIN = 0.01


def training_ids(data: Path) -> list[str]:
    """Ids of ``dataset.json``'s train split that have an image/mask pair, sorted."""
    from biomedseg.data.discovery import find_pairs

    meta = json.loads((data / "dataset.json").read_text())
    present = {s.id for s in find_pairs(data / "images", data / "masks")}
    return sorted(i for i in meta["split"]["train"] if i in present)


def step_count(n: int, step: float) -> int:
    """Images added per round: ``step`` of ``n`` rounded, at least one."""
    if not 0 < step < 1:
        raise ValueError(f"step must be in (0, 1), got {step}")
    return max(1, round(n * step))


def initial_ids(ids: list[str], count: int, seed: int) -> list[str]:
    """``count`` of ``ids`` drawn with ``random.Random(seed)`` (independent of the order given), sorted."""
    pool = sorted(ids)
    return sorted(random.Random(seed).sample(pool, min(count, len(pool))))


def random_ids(pool: list[str], count: int, seed: int, round_no: int) -> list[str]:
    """The random arm's pick of ``count`` pool ids in round ``round_no`` of seed ``seed``."""
    return sorted(random.Random(f"{seed}:{round_no}").sample(sorted(pool), min(count, len(pool))))


def labelled_farm(data: Path, ids: list[str], out: Path) -> Path:
    """A DATA folder of ``ids`` only: ``images/`` and ``masks/`` of symlinks to ``data``'s files and a
    ``dataset.json`` (``data``'s, with ``split = {"train": ids}``). An existing farm is reused."""
    from biomedseg.data.discovery import find_pairs

    if (out / "dataset.json").is_file():
        return out
    by_id = {s.id: s for s in find_pairs(data / "images", data / "masks")}
    missing = sorted(set(ids) - set(by_id))
    if missing:
        raise ValueError(f"{data}: no image/mask pair for {', '.join(missing[:5])}")
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        for sub, path in (("images", by_id[i].image), ("masks", by_id[i].mask)):
            link = out / sub / path.name
            if not link.is_symlink():
                link.symlink_to(path.resolve())
    meta = json.loads((data / "dataset.json").read_text())
    meta["split"] = {"train": sorted(ids)}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return out


def train_budget(budget_s: float, steps: int | None) -> dict:
    """Training options of every run: ``steps`` optimizer steps (one epoch of that many iterations, the
    same whatever the machine's load) when given, else ``budget_s`` seconds."""
    if steps:
        return {"epochs": 1, "iterations_per_epoch": steps}
    return {"time_budget": budget_s}


def steps_trained(run: Path) -> int:
    """Optimizer steps the run took (``metrics.csv``'s last ``iteration``)."""
    import csv

    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return int(rows[-1]["iteration"]) if rows else 0


def trained_dice(data: Path, ids: list[str], work: Path, budget: dict) -> tuple[Path, float, int]:
    """Train from scratch on ``ids`` of ``data`` (a symlink farm in ``work/data``) and score on the test
    split: ``(run, test Dice, steps trained)``. A finished run and its score are reused."""
    from biomedseg import evaluate, train
    from biomedseg.runs import RunFolder

    run = work / "run"
    if not RunFolder(run).paths.curves.is_file():
        farm = labelled_farm(data, ids, work / "data")
        train(farm, run, quiet=True, num_threads=1, device="cpu", **budget)
    scores = run / "eval_test" / "metrics.json"
    if scores.is_file():
        dice = float(json.loads(scores.read_text())["dice"])
    else:
        out = evaluate(run, data, run / "eval_test", split="test", quiet=True, device="cpu", overlays=False)
        dice = float(out["dice"])
    return run, dice, steps_trained(run)


def suggested_ids(run: Path, data: Path, labelled: list[str], pool: list[str], count: int, out: Path) -> list[str]:
    """The ``count`` pool ids ``suggest`` ranks first (the previous round's ``run``, ``--exclude`` the labelled farm).

    Should ``suggest`` return fewer (it drops near duplicates of labelled images and keeps one of each group
    of near duplicates inside the pool), the rest are drawn at random and a warning is printed."""
    from biomedseg.data.discovery import find_pairs
    from biomedseg.trust.suggest import SuggestOptions, suggest

    by_id = {s.id: s.image for s in find_pairs(data / "images", data / "masks")}
    farm = labelled_farm(data, labelled, out / "labelled")
    result = suggest(
        run,
        [str(by_id[i]) for i in pool],
        SuggestOptions(n=count, out=out / "suggest.csv", exclude=[farm], device="cpu"),
    )
    id_of = {str(by_id[i]): i for i in pool}
    picks = [id_of[row["file"]] for row in result["rows"]][:count]
    if len(picks) < count:
        rest = [i for i in pool if i not in picks]
        print(f"warning: {out}: suggest gave {len(picks)} of {count}; {count - len(picks)} at random", file=sys.stderr)
        picks += random_ids(rest, count - len(picks), 0, -1)
    return sorted(picks)


def _picks(arm, prev: Path | None, data: Path, labelled: list[str], ids: list[str], k: int, where: Path) -> list[str]:
    """The arm's labelled ids after this round (those of an earlier, interrupted benchmark are reused)."""
    done = where / "data" / "dataset.json"
    if done.is_file():
        return json.loads(done.read_text())["split"]["train"]
    pool = sorted(set(ids) - set(labelled))
    if arm == "suggest":
        return sorted(labelled + suggested_ids(prev, data, labelled, pool, k, where))
    return sorted(labelled + random_ids(pool, k, arm, int(where.parent.name.removeprefix("round"))))


def run_dataset(name: str, args, work: Path) -> dict:
    """Every run of one data set: ``{"n_train", "step", "fractions", "suggest": [Dice per round], "random":
    {seed: [...]}, "full", "steps": the same layout, optimizer steps}``."""
    data, budget = SHARED / name, train_budget(args.budget_s, args.steps)
    ids = training_ids(data)
    k = step_count(len(ids), args.step)
    start = initial_ids(ids, k, args.start_seed)
    res = {"n_train": len(ids), "step": k, "fractions": [len(start) / len(ids)]}
    run0, d0, s0 = trained_dice(data, start, work / "round0", budget)
    res["suggest"], res["random"] = [d0], {s: [d0] for s in args.seeds}
    steps = {"suggest": [s0], "random": {s: [s0] for s in args.seeds}}
    _, res["full"], steps["full"] = trained_dice(data, ids, work / "full", budget)
    res["steps"] = steps
    arms = {"suggest": (list(start), run0), **{s: (list(start), None) for s in args.seeds}}
    for r in range(1, args.rounds + 1):
        for arm, (labelled, prev) in arms.items():
            where = work / f"round{r}" / (arm if arm == "suggest" else f"random{arm}")
            labelled = _picks(arm, prev, data, labelled, ids, k, where)
            run, dice, n_steps = trained_dice(data, labelled, where, budget)
            arms[arm] = (labelled, run)
            (res["suggest"] if arm == "suggest" else res["random"][arm]).append(dice)
            (steps["suggest"] if arm == "suggest" else steps["random"][arm]).append(n_steps)
            print(
                f"{name} round {r} {arm}: {len(labelled)} labelled, Dice {dice:.4f}, {n_steps} steps", file=sys.stderr
            )
        res["fractions"].append(len(arms["suggest"][0]) / len(ids))
    return res


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(res: dict) -> dict:
    """Whether ``suggest`` beat the random mean at every round after the first, and ended within
    :data:`FULL_MARGIN` of the full-data Dice."""
    rounds = range(1, len(res["fractions"]))
    ahead = [res["suggest"][r] > mean_sd([v[r] for v in res["random"].values()])[0] for r in rounds]
    final = res["suggest"][-1]
    return {
        "ahead_every_round": bool(ahead) and all(ahead),
        "rounds_ahead": sum(ahead),
        "rounds": len(ahead),
        "final": final,
        "within_full": final >= res["full"] - FULL_MARGIN,
    }


def _steps_cell(res: dict, r: int) -> str:
    st = res.get("steps")
    if not st:
        return ""
    return f"{st['suggest'][r]}; {'/'.join(str(v[r]) for v in st['random'].values())}; {st['full']}"


def _step_range(res: dict) -> str:
    st = res["steps"]
    every = [*st["suggest"], *(x for v in st["random"].values() for x in v), st["full"]]
    return f"{min(every)}-{max(every)}"


def table(results: dict) -> list[str]:
    lines = [
        "| dataset | round | labelled fraction (images) | suggest Dice | random mean ± sd | full-data Dice | "
        "steps (suggest; random; full) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for r, frac in enumerate(res["fractions"]):
            m, sd = mean_sd([v[r] for v in res["random"].values()])
            n_lab = res["step"] * (r + 1)
            lines.append(
                f"| {name} | {r} | {frac:.2f} ({n_lab}/{res['n_train']}) | {res['suggest'][r]:.4f} | "
                f"{m:.4f} ± {sd:.4f} | {res['full']:.4f} | {_steps_cell(res, r)} |"
            )
    return lines


def result_lines(results: dict, budget: str, cpu: str) -> list[str]:
    out = []
    for name, res in results.items():
        v = verdict(res)
        final_random = mean_sd([x[-1] for x in res["random"].values()])[0]
        out.append(
            f"RESULT active_learning dataset={name} budget={budget.replace(' ', '')} steps={_step_range(res)} "
            f"rounds={v['rounds']} "
            f"suggest_ahead_every_round={'yes' if v['ahead_every_round'] else 'no'} "
            f"rounds_ahead={v['rounds_ahead']}/{v['rounds']} final_fraction={res['fractions'][-1]:.2f} "
            f"final_suggest={v['final']:.4f} final_random_mean={final_random:.4f} full={res['full']:.4f} "
            f"within_{FULL_MARGIN:g}_of_full={'yes' if v['within_full'] else 'no'}{cpu}"
        )
    return out


def plot(results: dict, path: Path, budget: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        x = res["fractions"]
        for vals in res["random"].values():
            ax.plot(x, vals, "o", color="tab:grey", alpha=0.35, ms=4)
        stats = [mean_sd([v[r] for v in res["random"].values()]) for r in range(len(x))]
        ax.errorbar(
            x,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            color="tab:grey",
            marker="s",
            capsize=3,
            label=f"random (mean ± sd, {len(res['random'])} seeds)",
        )
        ax.plot(x, res["suggest"], "-o", color="tab:blue", label="suggest")
        ax.axhline(res["full"], color="tab:green", ls="--", label=f"all {res['n_train']} images")
        ax.axhspan(res["full"] - FULL_MARGIN, res["full"], color="tab:green", alpha=0.1)
        ax.set_title(name)
        ax.set_xlabel("labelled fraction of the training images")
        ax.set_ylabel("test Dice")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Dice vs labelled fraction (each run trained from scratch, {budget})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="training seconds per run")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run instead of --budget-s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step", type=float, default=0.1, help="fraction of the training images per round")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the random arms")
    ap.add_argument("--start-seed", type=int, default=0, help="seed of the round-0 labelled images")
    ap.add_argument("--out", default=None, help="results folder (default: a new temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="dsb2018_nuclei, 1 round, 1 seed, 4 s budgets")
    args = ap.parse_args(argv)
    if args.smoke:
        args.datasets, args.rounds, args.seeds, args.budget_s = "dsb2018_nuclei", 1, "0", 4.0
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    args = parse(argv)
    from cpu_class import cpu_fields  # the CPU model and bf16/AMX/VNNI flags of the RESULT lines

    out = Path(args.out or tempfile.mkdtemp(prefix="biomedseg_active_learning_"))
    results = {}
    for name in [n for n in args.datasets.split(",") if n]:
        if not (SHARED / name / "images").is_dir():
            print(f"skip {name}: not found under {SHARED}", file=sys.stderr)
            continue
        results[name] = run_dataset(name, args, out / name)
    if not results:
        return 1
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n".join(table(results)))
    budget = f"{args.steps} steps" if args.steps else f"{args.budget_s:g} s"
    print("\n".join(result_lines(results, budget, cpu_fields())))
    print(f"plot: {plot(results, out / 'active_learning.png', budget)}")
    return 0 if all(math.isfinite(r["full"]) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
