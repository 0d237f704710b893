"""Commands about trusting predictions and choosing what to label: ``suggest``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomedseg.cli.app import _within, app
from biomedseg.trust.suggest import DEFAULT_N


@app.command()
def suggest(
    run: Path = typer.Argument(..., help="run, CV or ensemble folder"),
    pool: List[str] = typer.Argument(..., help="unlabelled images: files, folders, glob patterns, .zarr"),
    n: int = typer.Option(DEFAULT_N, "--n", help="images to suggest"),
    out: Path = typer.Option(
        Path("suggest.csv"),
        "--out",
        "-o",
        help="ranked CSV; the contact sheet is written beside it with the suffix .html",
    ),
    exclude: Optional[List[Path]] = typer.Option(
        None,
        "--exclude",
        help="labelled DATA folder whose images (and "
        "near duplicates) are never suggested (repeatable; the run's "
        "training data always is)",
    ),
    tta: bool = typer.Option(False, "--tta", help="test-time augmentation (flips) for the probabilities"),
    device: str = typer.Option("auto", help="cpu | cuda | auto"),
    checkpoint: str = typer.Option("best", help="checkpoint of the run: best | last"),
):
    """Rank unlabelled images by how much labelling them should help: uncertain predictions, unlike
    each other, never images of the training data or near duplicates of them."""
    from biomedseg.io.writers import check_output_file
    from biomedseg.trust.suggest import SuggestOptions
    from biomedseg.trust.suggest import suggest as run_suggest

    _within(1, n=n)
    check_output_file(out)
    check_output_file(out.with_suffix(".html"))
    result = run_suggest(
        run,
        pool,
        SuggestOptions(n=n, out=out, exclude=list(exclude or []), device=device, checkpoint=checkpoint, tta=tta),
    )
    for row in result["rows"]:
        typer.echo(f"{row['rank']:>3}  {row['uncertainty']:.3f}  {row['file']}")
    if result["skipped"]:
        typer.echo(f"{len(result['skipped'])} image(s) not suggested (training data, duplicates, unreadable)")
    typer.echo(f"wrote {result['csv']} and {result['html']}")
