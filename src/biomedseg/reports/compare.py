"""The comparison report of several runs: ``compare.md`` and a self-contained ``compare.html``.

Receives plain data (:class:`CompareReport`), built by :mod:`biomedseg.workflows.comparison`. The page is
described once as a list of blocks (heading, paragraph, list, table, picture) and rendered twice:
Markdown links the PNGs written beside it, HTML embeds them as ``data:`` URIs, so the HTML file
alone opens offline (no CDN, no external CSS/JS). matplotlib: object-oriented API only (see
:mod:`biomedseg.training.curves`).
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomedseg.io.writers import write_text
from biomedseg.reports.html import _fmt
from biomedseg.reports.style import CSS as _CSS
from biomedseg.training.curves import plain_text, save_figure

__all__ = ["CompareReport", "Comparison", "RunColumn", "write_compare_report"]

MARKDOWN_NAME = "compare.md"
HTML_NAME = "compare.html"
CURVES_NAME = "training_curves.png"
PER_IMAGE_NAME = "per_image_dice.png"

# rows of the metrics table: (key of evaluate's metrics.json, label)
_METRICS = [
    ("image_dice", "Dice (mean over images)"),
    ("dice", "Dice (pooled pixels)"),
    ("iou", "IoU"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("pixel_accuracy", "pixel accuracy"),
]
_CLASS_METRICS = [("dice", "Dice"), ("iou", "IoU")]
_TRAINING = [
    ("seconds", "training time (s)"),
    ("steps", "steps"),
    ("epochs", "epochs"),
    ("best_val_dice", "best validation Dice"),
]
_SECONDS_DIGITS = 1
# panels of the overlaid curves: (column of metrics.csv, title)
_CURVE_PANELS = [("train_loss", "training loss"), ("val_dice", "validation Dice")]


@dataclass
class RunColumn:
    """One run as the report shows it.

    ``metrics``: evaluate's ``metrics.json``; ``training``: ``{seconds, steps, epochs,
    best_val_dice}`` (``None`` where unknown); ``curves``: ``read_metrics_csv`` of the run's
    training log (``{column: [float per epoch]}``) or ``None``.
    """

    name: str
    path: str
    eval_dir: str
    metrics: dict
    training: dict = field(default_factory=dict)
    curves: dict | None = None


@dataclass
class Comparison:
    """``result``: :func:`biomedseg.core.stats.paired_bootstrap` of ``b - a``; ``sentence`` says it in words."""

    a: str
    b: str
    result: dict
    sentence: str


@dataclass
class CompareReport:
    """Everything the report shows. ``settings``: ``(option, [value per run])`` for the options
    that differ; ``image_dice``: run name -> per-image Dice aligned with ``image_ids``."""

    title: str
    split: str
    data: str
    runs: list[RunColumn]
    settings: list[tuple[str, list]]
    image_ids: list[str]
    image_dice: dict[str, list[float]]
    comparisons: list[Comparison]
    method: str = ""
    #: the per-image column in ``image_dice`` (a field metric with ``compare --metric``)
    score: str = "image_dice"

    @property
    def score_label(self) -> str:
        return "Dice" if self.score == "image_dice" else self.score


# ---------------------------------------------------------------------------------------- blocks
def _blocks(report: CompareReport, pictures: dict[str, Path]) -> list[tuple]:
    """The page as ``("h1"|"h2"|"p"|"note", text)``, ``("list", [text])``, ``("table", header, rows)``
    and ``("img", path, alt)`` blocks."""
    names = [r.name for r in report.runs]
    blocks: list[tuple] = [
        ("h1", report.title),
        (
            "p",
            (
                f"{len(names)} runs evaluated on the {report.split!r} split of {report.data} "
                f"({len(report.image_ids)} images)."
            ),
        ),
        ("table", ["run", "run folder", "evaluation"], [[r.name, r.path, r.eval_dir] for r in report.runs]),
        ("h2", "Significance"),
        ("list", [c.sentence for c in report.comparisons]),
        (
            "table",
            [
                "A",
                "B",
                "images",
                "mean A - B" if any(c.result.get("direction") == "lower" for c in report.comparisons) else "mean B - A",
                "low",
                "high",
                "p",
            ],
            [
                [
                    c.a,
                    c.b,
                    c.result["n"],
                    c.result["mean_difference"],
                    c.result["low"],
                    c.result["high"],
                    _p_text(c.result),
                ]
                for c in report.comparisons
            ],
        ),
        ("note", report.method),
        ("h2", "Settings that differ"),
    ]
    if report.settings:
        blocks.append(
            (
                "table",
                ["setting", *names],
                [[key, *(_setting_text(v) for v in values)] for key, values in report.settings],
            )
        )
    else:
        blocks.append(("p", "The runs' resolved configs are identical."))
    blocks += [("h2", "Metrics"), ("table", ["metric", *names], _metric_rows(report.runs))]
    if "curves" in pictures:
        blocks += [("h2", "Training curves"), ("img", pictures["curves"], "overlaid training curves")]
    blocks += [("h2", f"Per-image {report.score_label} ({len(report.image_ids)} images)")]
    if "per_image" in pictures:
        blocks.append(("img", pictures["per_image"], f"per-image {report.score_label} of each run"))
    rows = [[iid, *(report.image_dice[n][i] for n in names)] for i, iid in enumerate(report.image_ids)]
    blocks.append(("table", ["image", *names], rows))
    return blocks


def _metric_rows(runs: list[RunColumn]) -> list[list]:
    rows = [[label, *(r.metrics.get(key) for r in runs)] for key, label in _METRICS]
    classes = list(runs[0].metrics.get("per_class") or {})
    for cls in classes:
        for key, label in _CLASS_METRICS:
            rows.append([f"{label}: {cls}", *((r.metrics.get("per_class") or {}).get(cls, {}).get(key) for r in runs)])
    rows += [[label, *(r.training.get(key) for r in runs)] for key, label in _TRAINING]
    seconds = rows[-len(_TRAINING)]
    seconds[1:] = [f"{v:.{_SECONDS_DIGITS}f}" if isinstance(v, float) else v for v in seconds[1:]]
    return rows


def _p_text(result: dict) -> str:
    """The bootstrap p-value; 0 means below the resolution of ``n_resamples``."""
    p = result["p_value"]
    return f"< {1 / result['n_resamples']:.2g}" if p == 0 else f"{p:.4f}"


def _setting_text(value: Any) -> Any:
    """Settings as written in a config: floats in their short form (1e-05, not 0.0000)."""
    return f"{value:g}" if isinstance(value, float) else value


# ------------------------------------------------------------------------------------- rendering
def _text(value: Any) -> str:
    """Cell text, not escaped: numbers as in the evaluation report (4 decimals), None/NaN as 'n/a'."""
    return value if isinstance(value, str) else html.unescape(_fmt(value))


def _md_cell(value: Any) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind in ("p", "note"):
            lines += [rest[0], ""] if rest[0] else []
        elif kind == "list":
            lines += [f"- {item}" for item in rest[0]] + [""]
        elif kind == "table":
            header, rows = rest
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{rest[1]}]({Path(rest[0]).name})", ""]
    return "\n".join(lines)


def _html_cell(value: Any, tag: str = "td") -> str:
    num = isinstance(value, numbers.Number) and not isinstance(value, bool)
    cls = ' class="num"' if num and tag == "td" else ""
    return f"<{tag}{cls}>{html.escape(_text(value))}</{tag}>"


def _html(blocks: list[tuple], title: str) -> str:
    parts: list[str] = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "note" and rest[0]:
            parts.append(f'<p class="note">{html.escape(rest[0])}</p>')
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in rest[0]) + "</ul>")
        elif kind == "table":
            header, rows = rest
            head = "<tr>" + "".join(_html_cell(h, "th") for h in header) + "</tr>"
            body = "".join("<tr>" + "".join(_html_cell(v) for v in row) + "</tr>\n" for row in rows)
            parts.append(f"<table>\n{head}\n{body}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(rest[0]).read_bytes()).decode("ascii")
            parts.append(f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(rest[1])}"></p>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


# -------------------------------------------------------------------------------------- pictures
def plot_overlaid_curves(runs: list[RunColumn], out_png) -> Path | None:
    """Training loss and validation Dice of every run against training steps (epochs when a log
    has no ``iteration`` column), one colour per run; ``None`` when no run has a training log."""
    from matplotlib.figure import Figure

    logged = [r for r in runs if r.curves]
    if not logged:
        return None
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, len(_CURVE_PANELS))
    for ax, (column, title) in zip(axes, _CURVE_PANELS):
        for i, run in enumerate(runs):
            curves = run.curves or {}
            steps = curves.get("iteration") or []
            xs = steps if steps and not all(math.isnan(s) for s in steps) else curves.get("epoch", [])
            pts = [(x, y) for x, y in zip(xs, curves.get(column, [])) if not (math.isnan(x) or math.isnan(y))]
            if pts:
                ax.plot(
                    *zip(*pts),
                    marker="o" if len(pts) <= 30 else None,
                    markersize=3,
                    color=f"C{i % 10}",
                    label=plain_text(run.name),
                )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    return save_figure(fig, Path(out_png))


def plot_per_image(report: CompareReport, out_png) -> Path | None:
    """Per-image Dice of each run side by side: one grey line per image joins its scores, the
    coloured marks are each run's mean. ``None`` when there are no images."""
    from matplotlib.figure import Figure

    names = [r.name for r in report.runs]
    if not report.image_ids:
        return None
    fig = Figure(figsize=(max(4.0, 1.6 * len(names) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    xs = list(range(len(names)))
    for i in range(len(report.image_ids)):
        ax.plot(xs, [report.image_dice[n][i] for n in names], color="grey", alpha=0.35, linewidth=0.8, marker=".")
    for j, n in enumerate(names):
        vals = [v for v in report.image_dice[n] if not math.isnan(v)]
        if vals:
            ax.plot([j], [sum(vals) / len(vals)], "D", color=f"C{j % 10}", markersize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([plain_text(n) for n in names], rotation=20 if len(names) > 4 else 0)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel(f"{report.score_label} (per image)")
    ax.set_title(f"Per-image {report.score_label} (lines join one image; diamonds: means)")
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, Path(out_png))


def write_compare_report(out_dir, report: CompareReport) -> tuple[Path, Path]:
    """Write ``compare.md``, ``compare.html`` and their PNGs into ``out_dir``; returns (md, html)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = {}
    curves = plot_overlaid_curves(report.runs, out_dir / CURVES_NAME)
    if curves is not None:
        pictures["curves"] = curves
    per_image = plot_per_image(report, out_dir / PER_IMAGE_NAME)
    if per_image is not None:
        pictures["per_image"] = per_image
    blocks = _blocks(report, pictures)
    md, page = out_dir / MARKDOWN_NAME, out_dir / HTML_NAME
    write_text(md, _markdown(blocks))
    write_text(page, _html(blocks, report.title))
    return md, page
