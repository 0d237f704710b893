"""Commands that plan and train: plan, train, cv, sweep, models, demo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomedseg.cli.app import DataArg, ImagesOpt, MasksOpt, SchedulerOpt, _within, app
from biomedseg.data.folds import DEFAULT_FOLDS
from biomedseg.io.writers import check_output_dir, check_output_file
from biomedseg.runs.layout import PLAN
from biomedseg.sweeps.run import DEFAULT_STUDY_NAME, DEFAULT_TRIALS
from biomedseg.workflows.demo import DEMO_TIME_BUDGET


@app.command()
def plan(
    data: Optional[Path] = DataArg,
    out: Path = typer.Option(Path(PLAN), "--out", "-o", help="plan file to write"),
    images: Optional[Path] = ImagesOpt,
    masks: Optional[Path] = MasksOpt,
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="training time the plan is for, e.g. 30m"),
    epochs: Optional[int] = typer.Option(None, help="or a number of epochs"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto (default: the config's, else auto)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="config option key=value (repeatable)"),
):
    """Fingerprint DATA and write plan.yaml: every automatic training choice with its reason."""
    from biomedseg.runs.config import build_config, parse_overrides
    from biomedseg.training.api import plan_data

    build_config({k: v for k, v in {"epochs": epochs, "time_budget": time_budget}.items() if v is not None}, "options")
    check_output_file(out)
    result = plan_data(
        data,
        out,
        images=images,
        masks=masks,
        time_budget=time_budget,
        epochs=epochs,
        device=device,
        config=config,
        **parse_overrides(set_),
    )
    for key, entry in result.items():
        if isinstance(entry, dict) and "value" in entry:
            typer.echo(f"{key:28s} {entry['value']!s:>8s}  {entry['reason']}")
    typer.echo(f"wrote {out}")


@app.command()
def train(
    data: Optional[Path] = DataArg,
    images: Optional[Path] = ImagesOpt,
    masks: Optional[Path] = MasksOpt,
    out: Path = typer.Option(..., "--out", "-o", help="run folder to write"),
    epochs: Optional[int] = typer.Option(None, help="number of epochs"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="wall-clock budget, e.g. 10m, 1h"),
    model: Optional[str] = typer.Option(None, help="architecture (see `biomedseg models`)"),
    loss: Optional[str] = typer.Option(None, help="loss spec, e.g. dice+ce, 0.5*focal+dice"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    seed: Optional[int] = typer.Option(None, help="random seed"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from checkpoints/last.pt"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    patch_size: Optional[int] = typer.Option(None, "--patch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    optimizer: Optional[str] = typer.Option(None, help="adam | adamw | sgd | rmsprop"),
    schedule: Optional[str] = typer.Option(None, help="poly | cosine | constant | step | plateau"),
    class_weights: Optional[str] = typer.Option(None, "--class-weights", help="none | inverse | median | w0,w1,..."),
    augment: Optional[str] = typer.Option(None, help="augmentation preset"),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction"),
    precision: Optional[str] = typer.Option(None, help="auto | fp32 | bf16 | fp16"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="any config option: key=value (repeatable)"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="plan.yaml from `biomedseg plan` (default: plan now)"),
    init: Optional[Path] = typer.Option(
        None,
        "--init",
        help="start from the weights of a trained run folder (or the best fold of a CV folder): a "
        "fine-tune on new or more data, classes matched by name; not an exported .onnx/.pt/.zip (a prediction graph). "
        "--resume continues the same run instead",
    ),
    allow_unlabelled: bool = typer.Option(
        False,
        "--allow-unlabelled",
        help="images without a mask file are not labelled: left out instead of an "
        "error (an empty mask file still means 'nothing here'); = --set allow_unlabelled=true",
    ),
    classifier_head: bool = typer.Option(
        False,
        "--classifier-head",
        help="add an image-level 'contains foreground' head (= --set "
        "model_kwargs.classifier_head=true); tune-postprocess can then gate empty masks with it",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train a model on DATA and write the run folder --out."""
    check_output_dir(out)
    named = (
        "data",
        "out",
        "images",
        "masks",
        "config",
        "resume",
        "quiet",
        "plan",
        "init",
        "set_",
        "classifier_head",
        "allow_unlabelled",
    )
    args = locals()
    flags = {k: v for k, v in args.items() if k not in named + ("named",) and v is not None}  # set flags only
    run_dir = _train_command(flags, **{k: args[k] for k in named})
    typer.echo(f"run folder: {run_dir}")


def _train_command(flags: dict, set_, classifier_head: bool, allow_unlabelled: bool, **train_args) -> Path:
    """``train`` after parsing: the flags the user set (an explicit ``--set key=null`` still wins over an
    unset flag) merged over ``--set`` options, then :func:`biomedseg.training.api.train`."""
    from biomedseg.runs.config import merge, parse_overrides
    from biomedseg.workflows.training import train as run_train

    overrides = merge(parse_overrides(set_), flags)
    if classifier_head:
        overrides = merge(overrides, {"model_kwargs": {"classifier_head": True}})
    if allow_unlabelled:
        overrides = merge(overrides, {"allow_unlabelled": True})
    return run_train(**train_args, **overrides)


@app.command("cv")
def cross_validate(
    data: Path = typer.Argument(..., help="DATA folder; its test split (dataset.json) stays out of the folds"),
    out: Path = typer.Option(..., "--out", "-o", help="CV folder to write (run again to resume)"),
    folds: int = typer.Option(DEFAULT_FOLDS, "--folds", "-k", help="number of folds"),
    fold: Optional[int] = typer.Option(None, "--fold", help="do this fold only (0-based; e.g. one process per GPU)"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="training time of all folds, e.g. 30m"),
    budget_per_fold: Optional[str] = typer.Option(
        None, "--budget-per-fold", help="training time of each fold (instead of --time-budget / folds)"
    ),
    stratify: bool = typer.Option(False, "--stratify", help="spread the rarest class present in each image evenly"),
    audit_json: Optional[Path] = typer.Option(
        None, "--audit", help="reuse this audit.json (or its folder) for the near-duplicate groups instead of auditing"
    ),
    prepare: bool = typer.Option(False, "--prepare", help="write the folds and the shared plan, train nothing"),
    tta: str = typer.Option("none", "--tta", help="test-time augmentation of the out-of-fold predictions"),
    model: Optional[str] = typer.Option(None, help="architecture (see `biomedseg models`)"),
    epochs: Optional[int] = typer.Option(None, help="epochs of each fold (instead of a time budget)"),
    seed: Optional[int] = typer.Option(None, help="random seed (folds and training)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (as for train)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="any training option: key=value (repeatable)"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="plan.yaml shared by the folds (default: plan now)"),
    scheduler: Optional[str] = SchedulerOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Cross-validate on the training pool: k folds (near duplicates kept together), one shared plan,
    out-of-fold predictions, per-fold and pooled scores; the CV folder is the ensemble of its folds."""
    from biomedseg.runs.config import merge, parse_overrides
    from biomedseg.workflows.crossval import cross_validate as run_cv
    from biomedseg.workflows.crossval import format_summary

    check_output_dir(out)
    flags = {
        k: v for k, v in {"model": model, "epochs": epochs, "seed": seed, "device": device}.items() if v is not None
    }
    overrides = merge(parse_overrides(set_), flags)
    s = run_cv(
        data,
        out,
        folds=folds,
        fold=fold,
        time_budget=time_budget,
        budget_per_fold=budget_per_fold,
        stratify=stratify,
        audit=audit_json,
        config=config,
        plan=plan,
        tta=tta,
        prepare=prepare,
        scheduler=scheduler,
        quiet=quiet,
        **overrides,
    )
    for label, message in s.get("failed", []):
        typer.echo(f"{label} failed: {message}", err=True)
    if s.get("missing"):
        typer.echo(f"folds not finished yet: {', '.join(map(str, s['missing']))} (run again, or --fold K for each)")
        return
    typer.echo(format_summary(s))
    typer.echo(f"wrote {out}/summary.json; {out} predicts as the ensemble of its {s['k']} folds")


@app.command()
def sweep(
    data: Path = typer.Argument(..., help="DATA folder with images/ and masks/ (and optional dataset.json)"),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="sweep folder: study.db, plan.yaml, trial_NNN/ run folders, table.md, table.csv, best_config.yaml",
    ),
    param: List[str] = typer.Option(
        ...,
        "--param",
        "-p",
        help="swept option (repeatable): NAME=a,b,c (a list), "
        "NAME=LOW:HIGH, NAME=LOW:HIGH:log (a range; integers when both bounds are)",
    ),
    trials: Optional[int] = typer.Option(
        None,
        "--trials",
        help=f"finished trials the study should hold (default: every grid point; {DEFAULT_TRIALS} with ranges)",
    ),
    time_budget_per_trial: Optional[str] = typer.Option(
        None, "--time-budget-per-trial", help="training time of each trial, e.g. 3m"
    ),
    test: bool = typer.Option(False, "--test", help="also evaluate each finished trial on the test split"),
    objective: Optional[str] = typer.Option(
        None,
        "--objective",
        help="rank trials by this field metric on the "
        "validation images (aji, pq, ap, hd95, nsd, rand, cldice, ...; "
        "default: validation Dice)",
    ),
    storage: Optional[str] = typer.Option(
        None,
        "--storage",
        help="Optuna storage URL shared by several sweep "
        "processes, e.g. postgresql://host/db (default: sqlite:///OUT/study.db)",
    ),
    study_name: str = typer.Option(DEFAULT_STUDY_NAME, "--study-name", help="the study's name in --storage"),
    prune: bool = typer.Option(
        True,
        "--prune/--no-prune",
        help="stop a trial whose validation Dice is below the median of the finished trials at the same epoch",
    ),
    plan: Optional[Path] = typer.Option(
        None, "--plan", help="plan.yaml shared by the trials (default: plan once, into OUT/plan.yaml)"
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (options of every trial)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="any config option: key=value (repeatable)"),
    epochs: Optional[int] = typer.Option(None, help="epochs of each trial"),
    model: Optional[str] = typer.Option(None, help="architecture (see `biomedseg models`)"),
    loss: Optional[str] = typer.Option(None, help="loss spec, e.g. dice+ce"),
    seed: Optional[int] = typer.Option(None, help="random seed of every trial (unless swept)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto"),
    scheduler: Optional[str] = SchedulerOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train one run per setting of the swept options (Optuna: grid or TPE, median pruning) and rank
    them by validation Dice; run again to resume, or start more processes on the same study."""
    _within(1, trials=trials)
    check_output_dir(out)
    _sweep_command(**locals())


def _sweep_command(data, out, param, set_, epochs, model, loss, seed, device, **sweep_args) -> None:
    """``sweep`` after parsing: the training options given (over ``--set``), the sweep, its summary lines."""
    from biomedseg.runs.config import merge, parse_overrides
    from biomedseg.sweeps.run import sweep as run_sweep

    given = {"epochs": epochs, "model": model, "loss": loss, "seed": seed, "device": device}
    overrides = merge(parse_overrides(set_), {k: v for k, v in given.items() if v is not None})
    s = run_sweep(data, out, param, **sweep_args, **overrides)
    typer.echo(
        f"{s['finished']} of {s['target']} trials finished; best: "
        + (f"trial {s['best']}" if s["best"] is not None else "none yet")
    )
    typer.echo(f"wrote {s['table']}, {s['csv']}" + (f", {s['best_config']}" if s["best_config"] else ""))


@app.command()
def models():
    """List the available architectures: parameters, GFLOPs per 256x256 grey image (2 classes), description."""
    from biomedseg.models.registry import get_entry, list_models
    from biomedseg.models.summary import model_summary

    typer.echo(f"{'name':16s} {'params':>8s} {'GFLOPs':>7s}  description (GFLOPs @256x256, 1 channel, 2 classes)")
    for name in list_models():
        s = model_summary(name, in_channels=1, n_classes=2, size=256)
        typer.echo(f"{name:16s} {s['params'] / 1e6:7.2f}M {s['gflops']:7.1f}  {get_entry(name).description}")


@app.command()
def demo(
    out: Path = typer.Option(Path("biomedseg_demo"), "--out", "-o", help="folder for data, run and results"),
    time_budget: str = typer.Option(DEMO_TIME_BUDGET, "--time-budget", help="training time"),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Generate synthetic data, train, evaluate, predict and report (the built-in default job)."""
    from biomedseg.workflows.demo import run_demo

    _within(0, seed=seed)
    check_output_dir(out)
    run_demo(out, time_budget=time_budget, seed=seed, quiet=quiet)
