"""Per-class bar charts as PNG files (training curves: :mod:`biomedseg.training.curves`).

matplotlib is imported inside the functions, through its object-oriented API only (see
:mod:`biomedseg.training.curves`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from biomedseg.training.curves import plain_text, plot_curves, read_metrics_csv, save_figure, to_float

__all__ = ["plot_curves", "plot_class_bars", "read_metrics_csv"]


def plot_class_bars(per_class: Mapping[str, Mapping[str, float]], out_png) -> Path:
    """Grouped bar chart of Dice, IoU, precision and recall per class; returns ``out_png``.

    ``per_class`` is ``scores_from_confusion(...)["per_class"]`` (``{name: {"dice": ...}}``);
    missing scores are drawn as 0-height bars.
    """
    from matplotlib.figure import Figure

    names = [plain_text(n) for n in per_class]
    keys = [("dice", "Dice"), ("iou", "IoU"), ("precision", "precision"), ("recall", "recall")]
    width = 0.8 / len(keys)
    fig = Figure(figsize=(min(20.0, max(5.0, 1.2 * len(names) + 2.5)), 4), layout="constrained")
    ax = fig.subplots()
    for j, (key, label) in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(names))]
        ys = [to_float(per_class[n].get(key)) for n in per_class]
        ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width=width, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score")
    ax.set_title("Scores per class")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=len(keys), fontsize="small", frameon=False)
    return save_figure(fig, Path(out_png))
