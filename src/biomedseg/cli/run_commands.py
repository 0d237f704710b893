"""Commands on trained runs: evaluate, predict, tune-postprocess, export."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomedseg.cli.app import DataArg, ImagesOpt, MasksOpt, SchedulerOpt, _within, app
from biomedseg.core.errors import UserError
from biomedseg.engine.defaults import COMPILE_MIN_TILES, DEFAULT_COMPILE
from biomedseg.inference.exported.options import DEFAULT_ENGINE, DEFAULT_EXPORT_ENGINE, DEFAULT_LICENSE
from biomedseg.io.mask_encoding import DEFAULT_MASK_FORMAT
from biomedseg.io.writers import check_output_dir, check_output_file
from biomedseg.vector.geojson import DEFAULT_OBJECT_TYPE


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
    valid_dir: Optional[Path] = typer.Option(
        None, "--valid-masks", help="count only pixels inside these masks (e.g. DRIVE fov/)"
    ),
    no_overlays: bool = typer.Option(False, "--no-overlays"),
    metrics: Optional[str] = typer.Option(
        None,
        "--metrics",
        help="field metrics: groups or names, comma-separated "
        "(boundary, object, instance, thin, shape, all; aji, pq, hd95, ...); "
        "default: dataset.json's \"metrics\" or the data's fingerprint",
    ),
    nsd_tolerance_um: Optional[float] = typer.Option(
        None,
        "--nsd-tolerance-um",
        help="normalised surface Dice tolerance in µm where the pixel size is known (default 2 px)",
    ),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Evaluate a run on a labelled split: Dice, IoU, precision, recall, F1, FP/FN, the field's boundary, object,
    instance, thin-structure or shape metrics; overlays; per-object table; HTML report."""
    from biomedseg.workflows.evaluation import evaluate as run_eval
    from biomedseg.workflows.evaluation import format_metrics

    check_output_dir(out)
    m = run_eval(
        run,
        data,
        out,
        images=images,
        masks=masks,
        split=split,
        tta=tta,
        overlays=not no_overlays,
        valid_dir=valid_dir,
        device=device,
        quiet=quiet,
        postprocess=not no_postprocess,
        metrics=metrics,
        nsd_tolerance_um=nsd_tolerance_um,
    )
    typer.echo(format_metrics(m))
    typer.echo(f"wrote {out}/metrics.json, per_image.csv, per_object.csv, overlays/, report.html")


@app.command()
def predict(
    run: Path = typer.Argument(
        ...,
        help="run folder (`train`), CV folder (`cv`), ensemble (`ensemble`), or a "
        "file written by `export` (.onnx, TorchScript .pt, bioimage.io .zip)",
    ),
    inputs: List[str] = typer.Argument(..., help="image files, folders, glob patterns or .zarr folders"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    tta: str = typer.Option("none", "--tta", help="test-time augmentation: none | flips | flips+rot90"),
    probabilities: bool = typer.Option(False, "--probabilities", help="also write <name>_proba.tif (float16)"),
    uncertainty: bool = typer.Option(
        False,
        "--uncertainty",
        help="also write <name>_uncertainty.tif (float16; entropy, or disagreement of the --tta transforms "
        "or of a CV/ensemble folder's members)",
    ),
    no_overlays: bool = typer.Option(False, "--no-overlays"),
    overwrite: bool = typer.Option(False, "--overwrite", help="redo inputs whose mask already exists"),
    no_postprocess: bool = typer.Option(False, "--no-postprocess", help="ignore RUN/postprocess.yaml (plain argmax)"),
    rle: Optional[Path] = typer.Option(None, "--rle", help="also write a Kaggle run-length CSV (img,pixels) here"),
    instances: bool = typer.Option(False, "--instances", help="also write <name>_instances.tif (int32 object labels)"),
    output_format: Optional[str] = typer.Option(
        None, "--format", help="mask format: png | tiff | zarr (default png; huge inputs: tiled tiff)"
    ),
    level: int = typer.Option(0, "--level", help="pyramid level of TIFF/OME-Zarr inputs (0 = full resolution)"),
    skip_blank: Optional[float] = typer.Option(
        None, "--skip-blank", help="huge inputs: skip tiles whose normalised std is below this (predicted background)"
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="tiles per forward pass"),
    mask_format: str = typer.Option(
        DEFAULT_MASK_FORMAT,
        "--mask-format",
        help="mask values: index (class indices) | binary (0/255) | palette (PNG palette "
        "with the class colours) | rgb (class colours) | auto (as the training masks)",
    ),
    geojson: bool = typer.Option(
        False,
        "--geojson",
        help="also write <name>.geojson: a polygon per object, "
        "QuPath classification (name, colour), full-resolution pixel coordinates",
    ),
    geojson_objects: str = typer.Option(
        DEFAULT_OBJECT_TYPE,
        "--geojson-objects",
        help="QuPath object type of the GeoJSON features: annotation | detection",
    ),
    engine: Optional[str] = typer.Option(
        None,
        "--engine",
        help=f"network runtime: torch | onnxruntime | auto "
        f"(the faster on one tile batch); default {DEFAULT_ENGINE} for a run "
        f"folder, {DEFAULT_EXPORT_ENGINE} for an exported file",
    ),
    compile_mode: str = typer.Option(
        DEFAULT_COMPILE,
        "--compile",
        help=f"torch.compile the network: auto | on | off (auto: CPU jobs of {COMPILE_MIN_TILES}+ tile forwards)",
    ),
    device: str = typer.Option("auto"),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        help="torch threads (default: the machine's cores; with --scheduler: each task's share of its worker's cores)",
    ),
    scheduler: Optional[str] = SchedulerOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Predict masks for new images of any size (sliding window, Gaussian blending; huge images streamed);
    predictions.csv: areas, objects, uncertainty and out-of-distribution flags per image."""
    _predict_command(**locals())


def _predict_command(
    run, inputs, out, scheduler, no_overlays, no_postprocess, skip_blank, geojson, geojson_objects, compile_mode, **same
) -> None:
    """The ``predict`` command after parsing: checks, :class:`PredictOptions` (``same``: options of the same name),
    local or cluster prediction, the summary line; exit code 1 when an input failed."""
    from biomedseg.inference.predict.options import PredictOptions
    from biomedseg.workflows.prediction import predict as run_predict

    _within(0, level=same["level"], skip_blank=skip_blank)
    _within(1, batch_size=same["batch_size"], threads=same["threads"])
    check_output_dir(out)
    if same["rle"] is not None:
        check_output_file(same["rle"])
    options = PredictOptions(
        overlays=not no_overlays,
        postprocess=not no_postprocess,
        skip_blank_std=skip_blank,
        geojson=geojson and geojson_objects,
        compile=compile_mode,
        **same,
    )
    if scheduler is None:
        s = run_predict(run, inputs, out, options)
    else:  # one job per file on the cluster
        from biomedseg.workflows.prediction import predict_on_cluster

        s = predict_on_cluster(run, inputs, out, options, address=scheduler)
    typer.echo(
        f"{len(s.done)} predicted ({len(s.streamed)} streamed), {len(s.skipped)} skipped (already done), "
        f"{len(s.failed)} failed -> {out}"
    )
    if s.rle is not None:
        typer.echo(f"wrote {s.rle}")
    if s.predictions is not None:
        flagged = f" ({len(s.flagged)} unlike the training data: ood_flag)" if s.flagged else ""
        typer.echo(f"wrote {s.predictions}{flagged}")
    if s.failed:  # each failure was logged once, as it happened
        raise typer.Exit(1)


@app.command("tune-postprocess")
def tune_postprocess(
    run: Path = typer.Argument(..., help="run folder (`train`), CV folder (`cv`) or ensemble (`ensemble`)"),
    data: Optional[Path] = typer.Argument(None, help="labelled DATA folder (default: the run's training data)"),
    split: str = typer.Option("val", help="split to tune on: val | test | train | all"),
    images: Optional[Path] = ImagesOpt,
    masks: Optional[Path] = MasksOpt,
    tta: str = typer.Option("none", "--tta", help="none | flips | flips+rot90 (use what you will predict with)"),
    no_gating: bool = typer.Option(False, "--no-gating", help="do not tune the empty-mask gate"),
    valid_dir: Optional[Path] = typer.Option(
        None, "--valid-masks", help="fit the temperature only on pixels inside these masks (e.g. DRIVE fov/)"
    ),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Tune post-processing (per-class thresholds, minimum object area, empty-mask gate) on a split;
    writes RUN/postprocess.yaml, which predict and evaluate then apply."""
    from biomedseg.runs import RunPaths
    from biomedseg.workflows.tune_postprocess import tune_postprocess as run_tune

    check_output_file(RunPaths(run).postprocess)
    cfg = run_tune(
        run,
        data,
        split=split,
        images=images,
        masks=masks,
        tta=tta,
        gate=not no_gating,
        device=device,
        quiet=quiet,
        valid_dir=valid_dir,
    )
    t = cfg.tuning
    typer.echo(
        f"{t['n_images']} {t['split']} images: dice {t['dice_argmax']:.4f} (argmax) -> {t['dice_tuned']:.4f} "
        f"(tuned); image_dice {t['image_dice_without_gating']:.4f} without gating, "
        f"{t['image_dice_with_gating']:.4f} with gating ({'adopted' if t['gating_adopted'] else 'not adopted'})"
    )
    for name, steps in cfg.classes.items():
        typer.echo(
            f"  {name:16s} threshold {steps.threshold if steps.threshold is not None else 'argmax'}  "
            f"min_object_area {steps.min_object_area}"
        )
    if t.get("classifier_head"):
        typer.echo(
            f"  classifier gate (threshold {t['classifier_gate_threshold']}): image_dice "
            f"{t['image_dice_without_gating']:.4f} without, {t['image_dice_with_classifier_gate']:.4f} with "
            f"({'adopted' if t['adopted'].get('classifier_gating') else 'not adopted'})"
        )
    if cfg.gating.active:
        typer.echo(
            f"  gate: min_total_area {cfg.gating.min_total_area}  "
            f"min_max_probability {cfg.gating.min_max_probability}  "
            f"min_classifier_probability {cfg.gating.min_classifier_probability}"
        )
    typer.echo(f"wrote {RunPaths(run).postprocess}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="run folder written by `train`"),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx | torchscript | bioimageio"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write: .onnx, .pt or .zip (bioimage.io package)"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
    license_: str = typer.Option(DEFAULT_LICENSE, "--license", help="bioimage.io: SPDX licence id of the model"),
    author: Optional[List[str]] = typer.Option(None, "--author", help="bioimage.io: author name (repeatable)"),
    int8: bool = typer.Option(False, "--int8", help="onnx: static int8 quantisation (ONNX Runtime, calibrated)"),
    calibrate: Optional[Path] = typer.Option(
        None, "--calibrate", help="--int8: folder of images to calibrate on (default: the run's validation images)"
    ),
):
    """Export a run's network with everything predict needs (normalisation, sliding window, classes,
    post-processing) as metadata, after a parity check against PyTorch on the run's validation images."""
    from biomedseg.export.writer import export_run

    if calibrate is not None and not int8:
        raise UserError("--calibrate: only with --int8")
    quant = None
    if int8:
        from biomedseg.export.quantize import Int8Options

        quant = Int8Options(calibrate=calibrate)
    r = export_run(
        run, fmt, out, checkpoint=checkpoint, overwrite=overwrite, license=license_, authors=author, int8=quant
    )
    for report in r.parity:
        typer.echo(f"parity {report.summary()}")
    typer.echo(f"wrote {r.path} and {r.parity_path}")
