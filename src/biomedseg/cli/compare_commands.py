"""Commands over several runs: compare, ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomedseg.cli.app import app
from biomedseg.core.errors import UserError
from biomedseg.core.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED
from biomedseg.io.writers import check_output_dir
from biomedseg.workflows.comparison import DEFAULT_SPLIT, PAIRS, SCORE


@app.command()
def compare(
    runs: Optional[List[Path]] = typer.Argument(None, help="run folders to compare (at least 2)"),
    out: Path = typer.Option(..., "--out", "-o", help="report folder: compare.md, compare.html, compare.json, evals/"),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled DATA folder (default: the runs' training data)"),
    split: str = typer.Option(DEFAULT_SPLIT, help="split every run is evaluated on: test | val | train | all"),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="run (folder or name) the others are compared with (default: the first)"
    ),
    pairs: str = typer.Option(PAIRS[0], "--pairs", help="baseline (each run against it) | all (every pair)"),
    eval_: Optional[List[str]] = typer.Option(
        None,
        "--eval",
        help="RUN=EVALDIR: reuse this `biomedseg evaluate` "
        "folder for RUN (repeatable); other runs are evaluated into OUT/evals/",
    ),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, "--resamples", min=1, help="bootstrap resamples"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="seed of the bootstrap"),
    confidence: float = typer.Option(DEFAULT_CONFIDENCE, "--confidence", help="interval level, e.g. 0.95"),
    metric: str = typer.Option(
        SCORE,
        "--metric",
        help="per-image metric compared: image_dice, or a field metric "
        "(aji, pq, ap, hd95, nsd, rand, cldice, hc_error_px, ...)",
    ),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto, for the evaluations compare runs itself"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Compare runs on the same images: settings that differ, metrics, curves, per-image Dice (or --metric), and a
    paired bootstrap of the difference (is it larger than the noise?)."""
    from biomedseg.workflows.comparison import compare as run_compare

    check_output_dir(out)
    evaluations = {}
    for item in eval_ or []:
        run, sep, folder = item.partition("=")
        if not sep or not run or not folder:
            raise UserError(f"--eval {item}: expected RUN=EVALDIR")
        evaluations[run] = Path(folder)
    s = run_compare(
        runs or [],
        out,
        data=data,
        split=split,
        evaluations=evaluations,
        baseline=baseline,
        pairs=pairs,
        n_resamples=resamples,
        seed=seed,
        confidence=confidence,
        device=device,
        quiet=quiet,
        metric=metric,
    )
    for c in s["comparisons"]:
        typer.echo(c["sentence"])
    typer.echo(f"wrote {s['markdown']}, {s['html']}")


@app.command()
def ensemble(
    members: List[Path] = typer.Argument(
        ..., help="run, CV or ensemble folders (at least 2 runs in all: one CV folder is the ensemble of its folds)"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="ensemble folder to write"),
    weights: Optional[str] = typer.Option(None, "--weights", help="one weight per member, e.g. 1,1,2 (default equal)"),
    copy: bool = typer.Option(False, "--copy", help="copy the member runs into OUT/members/ (default: reference)"),
):
    """Combine runs into an ensemble folder (softmax probabilities averaged per tile) that evaluate,
    predict and tune-postprocess accept wherever a run is accepted."""
    from biomedseg.runs.ensemble import ensemble_members, parse_weights, write_ensemble

    check_output_dir(out)
    ens = write_ensemble(out, members, parse_weights(weights, len(members)), copy=copy)
    leaves = ensemble_members(ens)
    typer.echo(f"ensemble of {len(leaves)} runs: " + ", ".join(f"{leaf.root} ({w:.3g})" for leaf, w in leaves))
    typer.echo(f"wrote {out}")
