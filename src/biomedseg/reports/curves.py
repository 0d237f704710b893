"""Training curves and per-class bar charts as PNG files.

matplotlib is imported inside the functions (never at package import) and only through its
object-oriented API with the Agg canvas: no pyplot, so nothing changes the user's global
backend, no window opens on a headless server, and no figure is left in pyplot's registry.
Files are written atomically (:func:`biomedseg.io.writers.atomic_path`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping

from biomedseg.errors import file_error
from biomedseg.io.writers import atomic_path

__all__ = ["plot_curves", "plot_class_bars", "read_metrics_csv"]

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


def _save(fig, out_png: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_png


def _plain(text: str) -> str:
    """Escape ``$`` so that matplotlib does not parse names as mathtext."""
    return str(text).replace("$", r"\$")


def _to_float(text) -> float:
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
            columns.setdefault(key.strip(), [math.nan] * i).append(_to_float(value))
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
    fig.suptitle(_plain(Path(metrics_csv).resolve().parent.name or "training curves"))
    return _save(fig, Path(out_png))


def plot_class_bars(per_class: Mapping[str, Mapping[str, float]], out_png) -> Path:
    """Grouped bar chart of Dice, IoU, precision and recall per class; returns ``out_png``.

    ``per_class`` is ``scores_from_confusion(...)["per_class"]`` (``{name: {"dice": ...}}``);
    missing scores are drawn as 0-height bars.
    """
    from matplotlib.figure import Figure

    names = [_plain(n) for n in per_class]
    keys = [("dice", "Dice"), ("iou", "IoU"), ("precision", "precision"), ("recall", "recall")]
    width = 0.8 / len(keys)
    fig = Figure(figsize=(min(20.0, max(5.0, 1.2 * len(names) + 2.5)), 4), layout="constrained")
    ax = fig.subplots()
    for j, (key, label) in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(names))]
        ys = [_to_float(per_class[n].get(key)) for n in per_class]
        ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width=width, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score")
    ax.set_title("Scores per class")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=len(keys), fontsize="small", frameon=False)
    return _save(fig, Path(out_png))
