"""Training curves (``metrics.csv`` -> a 2x2 PNG), drawn by ``train`` at the end of a run.

matplotlib is imported inside the functions (never at package import) and only through its
object-oriented API with the Agg canvas: no pyplot, so nothing changes the user's global
backend, no window opens on a headless server, and no figure is left in pyplot's registry.
Files are written atomically (:func:`biomedseg.io.writers.atomic_path`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from biomedseg.core.errors import file_error
from biomedseg.io.writers import atomic_path

__all__ = ["plot_curves", "read_metrics_csv", "save_figure", "plain_text", "to_float"]

# (panel title, y label, [(column, legend label), ...])
_PANELS = [
    ("Loss", "loss", [("train_loss", "train"), ("val_loss", "validation")]),
    ("Overlap (validation)", "score", [("val_dice", "Dice"), ("val_iou", "IoU")]),
    (
        "Precision / recall (validation)",
        "score",
        [("val_precision", "precision"), ("val_recall", "recall"), ("val_f1", "F1")],
    ),
    ("Error pixels (validation)", "pixels", [("val_fp", "false positives"), ("val_fn", "false negatives")]),
]


def save_figure(fig, out_png: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_png


def plain_text(text: str) -> str:
    """Escape ``$`` so that matplotlib does not parse names as mathtext."""
    return str(text).replace("$", r"\$")


def to_float(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def read_metrics_csv(metrics_csv) -> dict[str, list[float]]:
    """Read a training ``metrics.csv`` into ``{column: [float per row]}``.

    Empty or non-numeric cells become NaN; a missing ``epoch`` column becomes 1..n.
    Raises ``UserError`` if the file cannot be read.
    """
    path = Path(metrics_csv)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise file_error(path, "metrics file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise file_error(path, f"cannot read metrics file ({exc})") from None
    columns: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key is None:  # more cells than header names
                continue
            columns.setdefault(key.strip(), [math.nan] * i).append(to_float(value))
        for col in columns.values():  # columns absent from this row
            if len(col) < i + 1:
                col.append(math.nan)
    epochs = columns.get("epoch")
    if epochs is None or all(math.isnan(e) for e in epochs):
        columns["epoch"] = [float(i + 1) for i in range(len(rows))]
    else:  # a missing epoch cell: one after the previous row's
        fixed, prev = [], 0.0
        for e in epochs:
            prev = prev + 1 if math.isnan(e) else e
            fixed.append(prev)
        columns["epoch"] = fixed
    return columns


def plot_curves(metrics_csv, out_png) -> Path:
    """Plot training curves from ``metrics.csv`` into a 2x2 PNG and return its path.

    Panels: train/validation loss; validation Dice & IoU; validation precision, recall & F1;
    validation false-positive & false-negative pixels per epoch. Missing columns and empty
    cells are skipped (a panel with nothing to draw says "no data"); a header-only file gives
    a figure of empty panels.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    data = read_metrics_csv(metrics_csv)
    epochs = data["epoch"]
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (title, ylabel, series) in zip(axes, _PANELS):
        drawn = 0
        for column, label in series:
            values = data.get(column)
            if not values:
                continue
            pts = [(x, y) for x, y in zip(epochs, values) if not math.isnan(y)]
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = "--" if column == "val_f1" else "-"  # F1 often lies on top of recall
            ax.plot(xs, ys, style, marker="o" if len(pts) <= 30 else None, markersize=3, label=label)
            drawn += 1
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle(plain_text(Path(metrics_csv).resolve().parent.name or "training curves"))
    return save_figure(fig, Path(out_png))
