"""Charts of the data audit page (matplotlib, object-oriented API, Agg canvas only).

Each ``plot_*`` function draws one PNG (written atomically) from a section of the audit dict;
those returning ``bool`` return ``False`` (and write nothing) when there is nothing to plot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biomedseg.io.writers import atomic_path


def _save_fig(fig, path: Path) -> None:
    """Render ``fig`` with the Agg canvas to ``path`` (PNG, 90 dpi, atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def plot_sizes(path: Path, sizes: list[dict]) -> None:
    """Scatter of image sizes (``inventory.sizes``: ``[{"width", "height", "count"}]``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    w = np.array([s["width"] for s in sizes], float)
    h = np.array([s["height"] for s in sizes], float)
    c = np.array([s["count"] for s in sizes], float)
    ax.scatter(w, h, s=20 + 200 * c / c.max(), alpha=0.6, color="#3070c0")
    for s in sizes[:8]:
        ax.annotate(str(s["count"]), (s["width"], s["height"]), fontsize=8)
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title("image sizes (marker = number of images)")
    _save_fig(fig, path)


def plot_classes(path: Path, masks: dict) -> None:
    """Bars of the pixel and image share of each class (the audit ``masks`` section)."""
    from matplotlib.figure import Figure

    names = list(masks["class_pixel_fraction"])
    fig = Figure(figsize=(min(16, 3 + 1.6 * len(names)), 3.6), layout="constrained")
    for k, (key, title) in enumerate(
        (("class_pixel_fraction", "share of pixels"), ("class_image_fraction", "share of images containing the class"))
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        vals = [masks[key][n] for n in names]
        bars = ax.bar(range(len(names)), vals, color="#4a90d9")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_title(title, fontsize=10)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=7)
    _save_fig(fig, path)


def plot_objects(path: Path, objects: dict) -> bool:
    """Log2 histograms of object areas per class (``masks.objects``)."""
    from matplotlib.figure import Figure

    shown = [(c, o) for c, o in objects.items() if o.get("count")]
    if not shown:
        return False
    fig = Figure(figsize=(6, 1.2 + 2.2 * len(shown)), layout="constrained")
    for k, (c, o) in enumerate(shown):
        ax = fig.add_subplot(len(shown), 1, k + 1)
        edges = o["histogram"]["edges"]
        counts = o["histogram"]["counts"]
        ax.bar(range(len(counts)), counts, color="#60a060")
        ax.set_xticks(range(len(counts)), [str(e) for e in edges], rotation=60, fontsize=7)
        rec = o.get("recommended_min_area")
        ax.set_title(
            f"{c}: {o['count']} objects, median {o['percentiles'].get('50', 0):.0f} px"
            + (f", recommended min area {rec} px" if rec else ""),
            fontsize=9,
        )
        ax.set_ylabel("objects", fontsize=8)
    fig.supxlabel("object area (px, bins start at)", fontsize=8)
    _save_fig(fig, path)
    return True


def plot_intensity(path: Path, acc, colour: bool, intensity: dict) -> bool:
    """Intensity histogram per channel from an ``IntensityAccumulator`` with the percentiles
    of the ``intensity`` section."""
    from matplotlib.figure import Figure

    hist = acc.histogram(colour)
    if hist is None:
        return False
    edges, counts = hist
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#d03030", "#30a030", "#3050d0"] if colour else ["#404040"]
    centres = 0.5 * (edges[:-1] + edges[1:])
    for i, row in enumerate(counts):
        ax.plot(centres, row / max(row.sum(), 1), color=colors[i], label=intensity["channel_names"][i])
    for key, ls in (("0.5", ":"), ("99.5", ":"), ("50", "--")):
        for v in intensity.get("percentiles", {}).get(key, []):
            ax.axvline(v, color="#888", ls=ls, lw=0.8)
    ax.set_xlabel("intensity")
    ax.set_ylabel("share of pixels")
    ax.set_title("intensity histogram (dotted: 0.5/99.5 percentiles, dashed: median)", fontsize=9)
    ax.legend(fontsize=8)
    _save_fig(fig, path)
    return True
