"""Command line: ``biomedseg COMMAND ...``.

Only parses arguments and calls one library function per command; torch and MONAI are imported
inside the commands so ``biomedseg --help`` answers at once. A :class:`UserError` is printed as
one line and exits with code 2, and so is an ``OSError`` (a full disk, a read-only folder), naming
the file; every command that writes checks its output location before it starts.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer

from biomedseg.comparison import DEFAULT_SPLIT, PAIRS
from biomedseg.data.folds import DEFAULT_FOLDS
from biomedseg.data.discovery import DATA_META
from biomedseg.data.splits import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from biomedseg.demo import DEMO_TIME_BUDGET
from biomedseg.engine.defaults import COMPILE_MIN_TILES, DEFAULT_COMPILE
from biomedseg.errors import UserError
from biomedseg.io.geojson import DEFAULT_OBJECT_TYPE
from biomedseg.io.mask_encoding import DEFAULT_MASK_FORMAT
from biomedseg.inference.export_options import DEFAULT_ENGINE, DEFAULT_EXPORT_ENGINE, DEFAULT_LICENSE
from biomedseg.runs.layout import PLAN
from biomedseg.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED
from biomedseg.sweeps import DEFAULT_STUDY_NAME, DEFAULT_TRIALS
from biomedseg.io.writers import check_output_dir, check_output_file

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Semantic segmentation of 2D biomedical images: audit, train, evaluate, predict.")

DataArg = typer.Argument(None, help="DATA folder with images/ and masks/ (and optional dataset.json)")
ImagesOpt = typer.Option(None, "--images", help="image folder (instead of DATA)")
MasksOpt = typer.Option(None, "--masks", help="mask folder (instead of DATA)")


def _within(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
            **options) -> None:
    """Refuse (one line, exit 2, before any work) an option outside ``[low, high]`` (``*_open``:
    the bound itself excluded), NaN included; options left unset (None) pass."""
    for name, value in options.items():
        if value is None or ((value > low if low_open else value >= low) and (value < high if high_open else value <= high)):
            continue
        bounds = (">" if low_open else ">=") + f" {low:g}"
        if high != math.inf:
            bounds += (" and <" if high_open else " and <=") + f" {high:g}"
        raise UserError(f"--{name.replace('_', '-')} {value}: must be {bounds}")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s"
                        if verbose else "%(message)s", stream=sys.stderr)
    logging.getLogger("biomedseg").setLevel(logging.DEBUG if verbose else logging.INFO)


@app.command()
def audit(
    data: Optional[Path] = DataArg,
    out: Path = typer.Option(..., "--out", "-o", help="report folder: audit.json, audit.html, audit_files/"),
    images: Optional[Path] = ImagesOpt,
    masks: Optional[Path] = MasksOpt,
    check_flips: bool = typer.Option(False, "--check-flips", help="also find mirrored (flipped) copies"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Check DATA before training: files, masks, class balance, intensities, near duplicates, leakage.

    Problems are reported (most serious first) with exit code 0; exit code 2 only when the data
    cannot be read at all.
    """
    from biomedseg.audit.run import format_audit_summary
    from biomedseg.reports.audit_html import audit_with_report

    check_output_dir(out)
    result = audit_with_report(data, out, images=images, masks=masks, check_flips=check_flips, progress=not quiet)
    typer.echo(format_audit_summary(result))
    typer.echo(f"wrote {out / 'audit.json'} and {out / 'audit.html'}")


@app.command()
def split(
    data: Path = typer.Argument(..., help="DATA folder; its dataset.json gets the split"),
    test_fraction: float = typer.Option(DEFAULT_TEST_FRACTION, "--test-fraction", help="share of images for testing"),
    val_fraction: float = typer.Option(DEFAULT_VAL_FRACTION, "--val-fraction", help="share of images for validation"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    stratify: bool = typer.Option(False, "--stratify", help="spread the rarest class present in each image evenly"),
    exclude_conflicts: bool = typer.Option(
        True, "--exclude-conflicts/--keep-conflicts",
        help="leave out (and list in DATA/exclude.txt) images whose mask conflicts with a near-duplicate copy"),
    audit: Optional[Path] = typer.Option(None, "--audit", help="reuse this audit.json (or its folder) instead of auditing"),
    check_flips: bool = typer.Option(False, "--check-flips", help="also group mirrored copies (when auditing)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Write a train/val/test split into DATA/dataset.json that keeps near-duplicate groups together."""
    from biomedseg.audit.split import write_split

    _within(0, 1, high_open=True, test_fraction=test_fraction, val_fraction=val_fraction)
    _within(0, seed=seed)
    check_output_file(Path(data) / DATA_META)
    r = write_split(data, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, stratify=stratify,
                    exclude_conflicts=exclude_conflicts, audit=audit, check_flips=check_flips, progress=not quiet)
    sides = ", ".join(f"{k} {v}" for k, v in r["split"].items())
    typer.echo(f"split: {sides} ({r['groups']} near-duplicate groups of {r['grouped_images']} images kept together)")
    if exclude_conflicts:
        typer.echo(f"excluded {r['excluded']} images with conflicting duplicate masks -> {r['exclude_txt']}")
    typer.echo(f"wrote {r['dataset_json']}")


@app.command()
def tile(
    src: Path = typer.Argument(..., help="DATA folder, or one large image (mask: --masks or x_mask.* beside it)"),
    out: Path = typer.Option(..., "--out", "-o", help="DATA folder to write: images/, masks/, tiles.csv, dataset.json"),
    size: int = typer.Option(512, "--size", help="tile side in pixels"),
    stride: Optional[int] = typer.Option(None, "--stride", help="step between tiles (default: --size, no overlap)"),
    keep_empty: float = typer.Option(0.1, "--keep-empty", help="fraction of background-only tiles kept (random, --seed)"),
    tissue_threshold: Optional[float] = typer.Option(
        None, "--tissue-threshold", help="drop background-only tiles with a smaller share of tissue pixels (0..1)"),
    level: int = typer.Option(0, "--level", help="pyramid level of TIFF slides (0 = full resolution)"),
    seed: int = typer.Option(0, "--seed", help="seed of the choice of background-only tiles"),
    masks: Optional[Path] = typer.Option(None, "--masks", help="mask folder (with DATA) or mask file (with one image)"),
    max_decode_megapixels: float = typer.Option(
        150.0, "--max-decode-megapixels", help="largest PNG/JPEG (or TIFF strip) decoded whole"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace tiles already in --out"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
):
    """Cut large images and masks into aligned tiles: a training DATA folder with provenance (tiles.csv)."""
    from biomedseg.data.tiling import tile_dataset

    _within(0, 1, keep_empty=keep_empty, tissue_threshold=tissue_threshold)
    _within(1, size=size, stride=stride)
    _within(0, level=level, seed=seed)
    _within(0, low_open=True, max_decode_megapixels=max_decode_megapixels)
    check_output_dir(out)
    s = tile_dataset(src, out, size=size, stride=stride, keep_empty=keep_empty, tissue_threshold=tissue_threshold,
                     level=level, seed=seed, max_decode_pixels=int(max_decode_megapixels * 1e6), masks=masks,
                     overwrite=overwrite, progress=not quiet)
    typer.echo(f"{s['n_tiles']} tiles from {s['n_sources']} images: {s['n_labelled']} labelled, "
               f"{s['n_empty_kept']} of {s['n_empty']} background-only kept, {s['n_blank_dropped']} blank dropped")
    typer.echo(f"wrote {out}/images, {out}/masks, {out}/tiles.csv, {out}/dataset.json")


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
    classifier_head: bool = typer.Option(
        False, "--classifier-head", help="add an image-level 'contains foreground' head (= --set "
        "model_kwargs.classifier_head=true); tune-postprocess can then gate empty masks with it"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train a model on DATA and write the run folder --out."""
    from biomedseg.training.api import train as run_train
    from biomedseg.training.config import merge, parse_overrides

    check_output_dir(out)
    flags = {"epochs": epochs, "time_budget": time_budget, "model": model, "loss": loss, "seed": seed,
             "device": device, "batch_size": batch_size, "patch_size": patch_size, "lr": lr, "optimizer": optimizer,
             "schedule": schedule, "class_weights": class_weights, "augment": augment, "val_fraction": val_fraction,
             "precision": precision}
    flags = {k: v for k, v in flags.items() if v is not None}  # unset flags: an explicit --set key=null still wins
    overrides = merge(parse_overrides(set_), flags)
    if classifier_head:
        overrides = merge(overrides, {"model_kwargs": {"classifier_head": True}})
    run_dir = run_train(data, out, images=images, masks=masks, config=config, resume=resume, quiet=quiet, plan=plan,
                        **overrides)
    typer.echo(f"run folder: {run_dir}")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="run folder (`train`), CV folder (`cv`) or ensemble (`ensemble`)"),
    data: Optional[Path] = DataArg,
    out: Path = typer.Option(..., "--out", "-o", help="folder for metrics.json, per_image.csv, overlays, report"),
    split: str = typer.Option("test", help="test | val | train | all"),
    images: Optional[Path] = ImagesOpt,
    masks: Optional[Path] = MasksOpt,
    tta: str = typer.Option("none", "--tta", help="test-time augmentation: none | flips | flips+rot90"),
    no_postprocess: bool = typer.Option(False, "--no-postprocess", help="ignore RUN/postprocess.yaml (plain argmax)"),
    valid_dir: Optional[Path] = typer.Option(None, "--valid-masks", help="count only pixels inside these masks (e.g. DRIVE fov/)"),
    no_overlays: bool = typer.Option(False, "--no-overlays"),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Evaluate a run on a labelled split: Dice, IoU, precision, recall, F1, FP/FN; overlays; HTML report."""
    from biomedseg.evaluation import evaluate as run_eval
    from biomedseg.evaluation import format_metrics

    check_output_dir(out)
    m = run_eval(run, data, out, images=images, masks=masks, split=split, tta=tta, overlays=not no_overlays,
                 valid_dir=valid_dir, device=device, quiet=quiet, postprocess=not no_postprocess)
    typer.echo(format_metrics(m))
    typer.echo(f"wrote {out}/metrics.json, per_image.csv, overlays/, report.html")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="run folder (`train`), CV folder (`cv`), ensemble (`ensemble`), or a "
                               "file written by `export` (.onnx, TorchScript .pt, bioimage.io .zip)"),
    inputs: List[str] = typer.Argument(..., help="image files, folders, glob patterns or .zarr folders"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    tta: str = typer.Option("none", "--tta", help="test-time augmentation: none | flips | flips+rot90"),
    probabilities: bool = typer.Option(False, "--probabilities", help="also write <name>_proba.tif (float16)"),
    no_overlays: bool = typer.Option(False, "--no-overlays"),
    overwrite: bool = typer.Option(False, "--overwrite", help="redo inputs whose mask already exists"),
    no_postprocess: bool = typer.Option(False, "--no-postprocess", help="ignore RUN/postprocess.yaml (plain argmax)"),
    rle: Optional[Path] = typer.Option(None, "--rle", help="also write a Kaggle run-length CSV (img,pixels) here"),
    instances: bool = typer.Option(False, "--instances", help="also write <name>_instances.tif (int32 object labels)"),
    output_format: Optional[str] = typer.Option(None, "--format", help="mask format: png | tiff | zarr "
                                                "(default png; huge inputs: tiled tiff)"),
    level: int = typer.Option(0, "--level", help="pyramid level of TIFF/OME-Zarr inputs (0 = full resolution)"),
    skip_blank: Optional[float] = typer.Option(None, "--skip-blank", help="huge inputs: skip tiles whose normalised "
                                               "std is below this (predicted background)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="tiles per forward pass"),
    mask_format: str = typer.Option(DEFAULT_MASK_FORMAT, "--mask-format",
                                    help="mask values: index (class indices) | binary (0/255) | palette (PNG palette "
                                    "with the class colours) | rgb (class colours) | auto (as the training masks)"),
    geojson: bool = typer.Option(False, "--geojson", help="also write <name>.geojson: a polygon per object, "
                                 "QuPath classification (name, colour), full-resolution pixel coordinates"),
    geojson_objects: str = typer.Option(DEFAULT_OBJECT_TYPE, "--geojson-objects",
                                        help="QuPath object type of the GeoJSON features: annotation | detection"),
    engine: Optional[str] = typer.Option(None, "--engine", help=f"network runtime: torch | onnxruntime | auto "
                                         f"(the faster on one tile batch); default {DEFAULT_ENGINE} for a run "
                                         f"folder, {DEFAULT_EXPORT_ENGINE} for an exported file"),
    compile_mode: str = typer.Option(DEFAULT_COMPILE, "--compile", help="torch.compile the network: auto | on | "
                                     f"off (auto: CPU jobs of {COMPILE_MIN_TILES}+ tile forwards)"),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Predict masks for new images of any size (sliding window, Gaussian blending; huge images streamed)."""
    from biomedseg.inference.predict import predict as run_predict

    _within(0, level=level, skip_blank=skip_blank)
    _within(1, batch_size=batch_size)
    check_output_dir(out)
    if rle is not None:
        check_output_file(rle)
    s = run_predict(run, inputs, out, tta=tta, overlays=not no_overlays, probabilities=probabilities,
                    overwrite=overwrite, device=device, quiet=quiet, postprocess=not no_postprocess, rle=rle,
                    instances=instances, output_format=output_format, level=level, batch_size=batch_size,
                    skip_blank_std=skip_blank, mask_format=mask_format, geojson=geojson and geojson_objects,
                    engine=engine, compile=compile_mode)
    typer.echo(f"{len(s.done)} predicted ({len(s.streamed)} streamed), {len(s.skipped)} skipped (already done), "
               f"{len(s.failed)} failed -> {out}")
    if s.rle is not None:
        typer.echo(f"wrote {s.rle}")
    if s.failed:  # each failure was logged once, as it happened
        raise typer.Exit(1)


@app.command()
def export(
    run: Path = typer.Argument(..., help="run folder written by `train`"),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx | torchscript | bioimageio"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write: .onnx, .pt or .zip (bioimage.io package)"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
    license_: str = typer.Option(DEFAULT_LICENSE, "--license", help="bioimage.io: SPDX licence id of the model"),
    author: Optional[List[str]] = typer.Option(None, "--author", help="bioimage.io: author name (repeatable)"),
):
    """Export a run's network with everything predict needs (normalisation, sliding window, classes,
    post-processing) as metadata, after a parity check against PyTorch on the run's validation images."""
    from biomedseg.inference.export import export_run

    r = export_run(run, fmt, out, checkpoint=checkpoint, overwrite=overwrite, license=license_, authors=author)
    for report in r.parity:
        typer.echo(f"parity {report.summary()}")
    typer.echo(f"wrote {r.path} and {r.parity_path}")


@app.command("tune-postprocess")
def tune_postprocess(
    run: Path = typer.Argument(..., help="run folder (`train`), CV folder (`cv`) or ensemble (`ensemble`)"),
    data: Optional[Path] = typer.Argument(None, help="labelled DATA folder (default: the run's training data)"),
    split: str = typer.Option("val", help="split to tune on: val | test | train | all"),
    images: Optional[Path] = ImagesOpt,
    masks: Optional[Path] = MasksOpt,
    tta: str = typer.Option("none", "--tta", help="none | flips | flips+rot90 (use what you will predict with)"),
    no_gating: bool = typer.Option(False, "--no-gating", help="do not tune the empty-mask gate"),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Tune post-processing (per-class thresholds, minimum object area, empty-mask gate) on a split;
    writes RUN/postprocess.yaml, which predict and evaluate then apply."""
    from biomedseg.inference.tuning import tune_postprocess as run_tune
    from biomedseg.runs import RunPaths

    check_output_file(RunPaths(run).postprocess)
    cfg = run_tune(run, data, split=split, images=images, masks=masks, tta=tta, gate=not no_gating, device=device,
                   quiet=quiet)
    t = cfg.tuning
    typer.echo(f"{t['n_images']} {t['split']} images: dice {t['dice_argmax']:.4f} (argmax) -> {t['dice_tuned']:.4f} "
               f"(tuned); image_dice {t['image_dice_without_gating']:.4f} without gating, "
               f"{t['image_dice_with_gating']:.4f} with gating ({'adopted' if t['gating_adopted'] else 'not adopted'})")
    for name, steps in cfg.classes.items():
        typer.echo(f"  {name:16s} threshold {steps.threshold if steps.threshold is not None else 'argmax'}  "
                   f"min_object_area {steps.min_object_area}")
    if t.get("classifier_head"):
        typer.echo(f"  classifier gate (threshold {t['classifier_gate_threshold']}): image_dice "
                   f"{t['image_dice_without_gating']:.4f} without, {t['image_dice_with_classifier_gate']:.4f} with "
                   f"({'adopted' if t['adopted'].get('classifier_gating') else 'not adopted'})")
    if cfg.gating.active:
        typer.echo(f"  gate: min_total_area {cfg.gating.min_total_area}  "
                   f"min_max_probability {cfg.gating.min_max_probability}  "
                   f"min_classifier_probability {cfg.gating.min_classifier_probability}")
    typer.echo(f"wrote {RunPaths(run).postprocess}")


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
    from biomedseg.training.api import plan_data
    from biomedseg.training.config import build_config, parse_overrides

    build_config({k: v for k, v in {"epochs": epochs, "time_budget": time_budget}.items() if v is not None}, "options")
    check_output_file(out)
    result = plan_data(data, out, images=images, masks=masks, time_budget=time_budget, epochs=epochs, device=device,
                       config=config, **parse_overrides(set_))
    for key, entry in result.items():
        if isinstance(entry, dict) and "value" in entry:
            typer.echo(f"{key:28s} {entry['value']!s:>8s}  {entry['reason']}")
    typer.echo(f"wrote {out}")


@app.command()
def models():
    """List the available architectures: parameters, GFLOPs per 256x256 grey image (2 classes), description."""
    from biomedseg.models.registry import get_entry, list_models
    from biomedseg.models.summary import model_summary

    typer.echo(f"{'name':16s} {'params':>8s} {'GFLOPs':>7s}  description (GFLOPs @256x256, 1 channel, 2 classes)")
    for name in list_models():
        s = model_summary(name, in_channels=1, n_classes=2, size=256)
        typer.echo(f"{name:16s} {s['params'] / 1e6:7.2f}M {s['gflops']:7.1f}  {get_entry(name).description}")


@app.command("augment-preview")
def augment_preview(
    data: Path = typer.Argument(..., help="DATA folder with images/ and masks/"),
    out: Path = typer.Option(Path("augment_preview.png"), "--out", "-o", help="PNG file to write"),
    preset: str = typer.Option("default", help="augmentation preset: none | flips | default | strong"),
    n: int = typer.Option(8, "--n", "-n", help="number of example patches (rows)"),
    seed: int = typer.Option(0, help="random seed (patches and augmentations)"),
    patch_size: int = typer.Option(256, "--patch-size", help="patch side in pixels, as in training"),
):
    """Draw random training patches before/after augmentation (image and mask overlay) to check a preset."""
    from biomedseg.reports.augment_preview import augment_preview as run_preview
    from biomedseg.training.config import MAX_PATCH_SIZE, MIN_PATCH_SIZE

    _within(1, n=n)
    _within(0, seed=seed)
    _within(MIN_PATCH_SIZE, MAX_PATCH_SIZE, patch_size=patch_size)
    check_output_file(out)
    path = run_preview(data, out, preset=preset, n=n, seed=seed, patch_size=patch_size)
    typer.echo(f"wrote {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("biomedseg_demo"), "--out", "-o", help="folder for data, run and results"),
    time_budget: str = typer.Option(DEMO_TIME_BUDGET, "--time-budget", help="training time"),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Generate synthetic data, train, evaluate, predict and report (the built-in default job)."""
    from biomedseg.demo import run_demo

    _within(0, seed=seed)
    check_output_dir(out)
    run_demo(out, time_budget=time_budget, seed=seed, quiet=quiet)


@app.command()
def compare(
    runs: Optional[List[Path]] = typer.Argument(None, help="run folders to compare (at least 2)"),
    out: Path = typer.Option(..., "--out", "-o", help="report folder: compare.md, compare.html, compare.json, evals/"),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled DATA folder (default: the runs' training data)"),
    split: str = typer.Option(DEFAULT_SPLIT, help="split every run is evaluated on: test | val | train | all"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="run (folder or name) the others are compared "
                                           "with (default: the first)"),
    pairs: str = typer.Option(PAIRS[0], "--pairs", help="baseline (each run against it) | all (every pair)"),
    eval_: Optional[List[str]] = typer.Option(None, "--eval", help="RUN=EVALDIR: reuse this `biomedseg evaluate` "
                                              "folder for RUN (repeatable); other runs are evaluated into OUT/evals/"),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, "--resamples", min=1, help="bootstrap resamples"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="seed of the bootstrap"),
    confidence: float = typer.Option(DEFAULT_CONFIDENCE, "--confidence", help="interval level, e.g. 0.95"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto, for the evaluations compare runs itself"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Compare runs on the same images: settings that differ, metrics, curves, per-image Dice, and a
    paired bootstrap of the Dice difference (is it larger than the noise?)."""
    from biomedseg.comparison import compare as run_compare

    check_output_dir(out)
    evaluations = {}
    for item in eval_ or []:
        run, sep, folder = item.partition("=")
        if not sep or not run or not folder:
            raise UserError(f"--eval {item}: expected RUN=EVALDIR")
        evaluations[run] = Path(folder)
    s = run_compare(runs or [], out, data=data, split=split, evaluations=evaluations, baseline=baseline, pairs=pairs,
                    n_resamples=resamples, seed=seed, confidence=confidence, device=device, quiet=quiet)
    for c in s["comparisons"]:
        typer.echo(c["sentence"])
    typer.echo(f"wrote {s['markdown']}, {s['html']}")


@app.command("cv")
def cross_validate(
    data: Path = typer.Argument(..., help="DATA folder; its test split (dataset.json) stays out of the folds"),
    out: Path = typer.Option(..., "--out", "-o", help="CV folder to write (run again to resume)"),
    folds: int = typer.Option(DEFAULT_FOLDS, "--folds", "-k", help="number of folds"),
    fold: Optional[int] = typer.Option(None, "--fold", help="do this fold only (0-based; e.g. one process per GPU)"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="training time of all folds, e.g. 30m"),
    budget_per_fold: Optional[str] = typer.Option(None, "--budget-per-fold", help="training time of each fold "
                                                  "(instead of --time-budget / folds)"),
    stratify: bool = typer.Option(False, "--stratify", help="spread the rarest class present in each image evenly"),
    audit_json: Optional[Path] = typer.Option(None, "--audit", help="reuse this audit.json (or its folder) for the "
                                              "near-duplicate groups instead of auditing"),
    prepare: bool = typer.Option(False, "--prepare", help="write the folds and the shared plan, train nothing"),
    tta: str = typer.Option("none", "--tta", help="test-time augmentation of the out-of-fold predictions"),
    model: Optional[str] = typer.Option(None, help="architecture (see `biomedseg models`)"),
    epochs: Optional[int] = typer.Option(None, help="epochs of each fold (instead of a time budget)"),
    seed: Optional[int] = typer.Option(None, help="random seed (folds and training)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (as for train)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="any training option: key=value (repeatable)"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="plan.yaml shared by the folds (default: plan now)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Cross-validate on the training pool: k folds (near duplicates kept together), one shared plan,
    out-of-fold predictions, per-fold and pooled scores; the CV folder is the ensemble of its folds."""
    from biomedseg.crossval import cross_validate as run_cv
    from biomedseg.crossval import format_summary
    from biomedseg.training.config import merge, parse_overrides

    check_output_dir(out)
    flags = {k: v for k, v in {"model": model, "epochs": epochs, "seed": seed, "device": device}.items() if v is not None}
    overrides = merge(parse_overrides(set_), flags)
    s = run_cv(data, out, folds=folds, fold=fold, time_budget=time_budget, budget_per_fold=budget_per_fold,
               stratify=stratify, audit=audit_json, config=config, plan=plan, tta=tta, prepare=prepare, quiet=quiet,
               **overrides)
    if s.get("missing"):
        typer.echo(f"folds not finished yet: {', '.join(map(str, s['missing']))} (run again, or --fold K for each)")
        return
    typer.echo(format_summary(s))
    typer.echo(f"wrote {out}/summary.json; {out} predicts as the ensemble of its {s['k']} folds")


@app.command()
def ensemble(
    members: List[Path] = typer.Argument(..., help="run, CV or ensemble folders (at least 2)"),
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


@app.command()
def sweep(
    data: Path = typer.Argument(..., help="DATA folder with images/ and masks/ (and optional dataset.json)"),
    out: Path = typer.Option(..., "--out", "-o", help="sweep folder: study.db, plan.yaml, trial_NNN/ run folders, "
                             "table.md, table.csv, best_config.yaml"),
    param: List[str] = typer.Option(..., "--param", "-p", help="swept option (repeatable): NAME=a,b,c (a list), "
                                    "NAME=LOW:HIGH, NAME=LOW:HIGH:log (a range; integers when both bounds are)"),
    trials: Optional[int] = typer.Option(None, "--trials", help="finished trials the study should hold (default: "
                                         f"every grid point; {DEFAULT_TRIALS} with ranges)"),
    time_budget_per_trial: Optional[str] = typer.Option(None, "--time-budget-per-trial", help="training time of "
                                                        "each trial, e.g. 3m"),
    test: bool = typer.Option(False, "--test", help="also evaluate each finished trial on the test split"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL shared by several sweep "
                                          "processes, e.g. postgresql://host/db (default: sqlite:///OUT/study.db)"),
    study_name: str = typer.Option(DEFAULT_STUDY_NAME, "--study-name", help="the study's name in --storage"),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="stop a trial whose validation Dice is below the "
                               "median of the finished trials at the same epoch"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="plan.yaml shared by the trials (default: plan once, "
                                        "into OUT/plan.yaml)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (options of every trial)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="any config option: key=value (repeatable)"),
    epochs: Optional[int] = typer.Option(None, help="epochs of each trial"),
    model: Optional[str] = typer.Option(None, help="architecture (see `biomedseg models`)"),
    loss: Optional[str] = typer.Option(None, help="loss spec, e.g. dice+ce"),
    seed: Optional[int] = typer.Option(None, help="random seed of every trial (unless swept)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train one run per setting of the swept options (Optuna: grid or TPE, median pruning) and rank
    them by validation Dice; run again to resume, or start more processes on the same study."""
    from biomedseg.sweeps import sweep as run_sweep
    from biomedseg.training.config import merge, parse_overrides

    _within(1, trials=trials)
    check_output_dir(out)
    given = {"epochs": epochs, "model": model, "loss": loss, "seed": seed, "device": device}
    overrides = merge(parse_overrides(set_), {k: v for k, v in given.items() if v is not None})
    s = run_sweep(data, out, param, trials=trials, time_budget_per_trial=time_budget_per_trial, test=test,
                  storage=storage, study_name=study_name, prune=prune, plan=plan, config=config, quiet=quiet,
                  **overrides)
    typer.echo(f"{s['finished']} of {s['target']} trials finished; best: "
               + (f"trial {s['best']}" if s["best"] is not None else "none yet"))
    typer.echo(f"wrote {s['table']}, {s['csv']}" + (f", {s['best_config']}" if s["best_config"] else ""))


def main() -> None:
    """Console-script entry point: user errors -> one line on stderr, exit code 2.

    Typer runs in standalone mode, so usage errors (a missing argument, an unknown option) are
    printed by it with exit code 2 as well.
    """
    _setup_logging()
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk, a read-only file system, permissions: the file and the reason
        typer.echo(f"error: {exc.filename}: {exc.strerror or exc}" if exc.filename else f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
