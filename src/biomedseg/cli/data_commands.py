"""Commands on a DATA folder: audit, split, tile, augment-preview."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from biomedseg.cli.app import DataArg, ImagesOpt, MasksOpt, _within, app
from biomedseg.data.discovery import DATA_META
from biomedseg.data.splits import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from biomedseg.io.sources import MAX_DECODE_PIXELS
from biomedseg.io.writers import check_output_dir, check_output_file


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
    from biomedseg.reports.audit.page import audit_with_report

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
        True,
        "--exclude-conflicts/--keep-conflicts",
        help="leave out (and list in DATA/exclude.txt) images whose mask conflicts with a near-duplicate copy",
    ),
    audit: Optional[Path] = typer.Option(
        None, "--audit", help="reuse this audit.json (or its folder) instead of auditing"
    ),
    check_flips: bool = typer.Option(False, "--check-flips", help="also group mirrored copies (when auditing)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
):
    """Write a train/val/test split into DATA/dataset.json that keeps near-duplicate groups together."""
    from biomedseg.audit.split import write_split

    _within(0, 1, high_open=True, test_fraction=test_fraction, val_fraction=val_fraction)
    _within(0, seed=seed)
    check_output_file(Path(data) / DATA_META)
    r = write_split(
        data,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        seed=seed,
        stratify=stratify,
        exclude_conflicts=exclude_conflicts,
        audit=audit,
        check_flips=check_flips,
        progress=not quiet,
    )
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
    keep_empty: float = typer.Option(
        0.1, "--keep-empty", help="fraction of background-only tiles kept (random, --seed)"
    ),
    tissue_threshold: Optional[float] = typer.Option(
        None, "--tissue-threshold", help="drop background-only tiles with a smaller share of tissue pixels (0..1)"
    ),
    level: int = typer.Option(0, "--level", help="pyramid level of TIFF slides (0 = full resolution)"),
    seed: int = typer.Option(0, "--seed", help="seed of the choice of background-only tiles"),
    masks: Optional[Path] = typer.Option(None, "--masks", help="mask folder (with DATA) or mask file (with one image)"),
    max_decode_megapixels: float = typer.Option(
        MAX_DECODE_PIXELS / 1e6, "--max-decode-megapixels", help="largest PNG/JPEG (or TIFF strip) decoded whole"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace tiles already in --out"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
):
    """Cut large images and masks into aligned tiles: a training DATA folder with provenance (tiles.csv)."""
    from biomedseg.data.tiling.dataset import tile_dataset

    _within(0, 1, keep_empty=keep_empty, tissue_threshold=tissue_threshold)
    _within(1, size=size, stride=stride)
    _within(0, level=level, seed=seed)
    _within(0, low_open=True, max_decode_megapixels=max_decode_megapixels)
    check_output_dir(out)
    s = tile_dataset(
        src,
        out,
        size=size,
        stride=stride,
        keep_empty=keep_empty,
        tissue_threshold=tissue_threshold,
        level=level,
        seed=seed,
        max_decode_pixels=int(max_decode_megapixels * 1e6),
        masks=masks,
        overwrite=overwrite,
        progress=not quiet,
    )
    typer.echo(
        f"{s['n_tiles']} tiles from {s['n_sources']} images: {s['n_labelled']} labelled, "
        f"{s['n_empty_kept']} of {s['n_empty']} background-only kept, {s['n_blank_dropped']} blank dropped"
    )
    typer.echo(f"wrote {out}/images, {out}/masks, {out}/tiles.csv, {out}/dataset.json")


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
    from biomedseg.runs.config import MAX_PATCH_SIZE, MIN_PATCH_SIZE

    _within(1, n=n)
    _within(0, seed=seed)
    _within(MIN_PATCH_SIZE, MAX_PATCH_SIZE, patch_size=patch_size)
    check_output_file(out)
    path = run_preview(data, out, preset=preset, n=n, seed=seed, patch_size=patch_size)
    typer.echo(f"wrote {path}")
