"""Static HTML evaluation report (one ``report.html`` that opens offline).

The page has no external CSS/JS; pictures are linked by paths relative to the report folder,
so the folder can be zipped and moved. A picture from outside the folder (the run's training
curves) is copied in first: the report never points outside its own folder. Every piece of text is escaped
with ``html.escape``.
"""

from __future__ import annotations

import html
import math
import numbers
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from biomedseg.core.render import ERROR_COLORS, ERROR_LABELS
from biomedseg.io.writers import atomic_path
from biomedseg.reports.curves import plot_class_bars
from biomedseg.reports.style import CSS as _CSS

__all__ = ["write_evaluation_report"]

REPORT_NAME = "report.html"
CLASS_BARS_NAME = "class_metrics.png"
CURVES_NAME = "training_curves.png"

# Summary keys shown first (with their labels); other scalar entries of ``metrics`` follow.
_SUMMARY = [
    ("image_dice", "Dice (mean over images)"),
    ("dice", "Dice (pooled pixels)"),
    ("iou", "IoU"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("f1", "F1"),
    ("pixel_accuracy", "Pixel accuracy"),
    ("fp", "False-positive pixels"),
    ("fn", "False-negative pixels"),
    ("n_pixels", "Pixels evaluated"),
    ("n_images", "Images"),
]
_CLASS_COLUMNS = [
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("f1", "F1"),
    ("fp", "FP pixels"),
    ("fn", "FN pixels"),
    ("support", "True pixels"),
]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    """Escaped cell text: reals with 4 decimals, integers plain, None/NaN as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        return f"{v:.4f}" if math.isfinite(v) else "n/a"
    return _esc(value)


def _cell(value: Any) -> str:
    cls = ' class="num"' if _is_number(value) else ""
    return f"<td{cls}>{_fmt(value)}</td>"


def _href(target: Path, out_dir: Path) -> str:
    """URL of ``target`` relative to ``out_dir`` (percent-encoded, then HTML-escaped)."""
    target = Path(target)  # relative paths are relative to the working directory
    try:
        rel = os.path.relpath(target.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows: no relative path exists
        return _esc(target.resolve().as_uri())
    return _esc(quote(Path(rel).as_posix()))


def _local_href(picture: Path, out_dir: Path, name: str) -> str:
    """Link to ``picture`` when it lies in ``out_dir``, else to a copy of it there named ``name``."""
    picture = Path(picture)
    if not picture.resolve().is_relative_to(out_dir.resolve()):
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(picture, tmp)
        picture = out_dir / name
    return _href(picture, out_dir)


def _sort_key(row: Mapping[str, Any]) -> tuple:
    value = row.get("image_dice")
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    # worst (lowest) first; rows without a score go last, ties by id
    return (math.isnan(v), v if not math.isnan(v) else 0.0, str(row.get("id", "")))


def _summary_table(metrics: Mapping[str, Any]) -> str:
    rows = []
    shown = set()
    for key, label in _SUMMARY:
        if key in metrics:
            rows.append(f"<tr><th>{_esc(label)}</th>{_cell(metrics[key])}</tr>")
            shown.add(key)
    for key, value in metrics.items():
        if key in shown or key == "per_class" or isinstance(value, (Mapping, list, tuple)):
            continue
        rows.append(f"<tr><th>{_esc(key)}</th>{_cell(value)}</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _field_section(field: Mapping[str, Any]) -> list[str]:
    """Which field metrics ran, why, and what their empty cases score."""
    items = "".join(f"<li><b>{_esc(g)}</b>: {_esc(text)}</li>" for g, text in (field.get("conventions") or {}).items())
    tol = field.get("nsd_tolerance_um")
    tol_text = f"{tol:g} µm where the pixel size is known, else " if tol is not None else ""
    return [
        "<h2>Field metrics</h2>",
        f"<p>Computed: {_esc(', '.join(field.get('groups', [])))}. Why: {_esc(field.get('reason', ''))} "
        f"(from {_esc(field.get('source', ''))}). Distances in pixels (<code>_um</code>: micrometres); "
        f"normalised surface Dice tolerance {_esc(tol_text)}{field.get('nsd_tolerance_px', 2):g} px. "
        "Means over images; per-object areas and perimeters in <code>per_object.csv</code>.</p>",
        f"<p>Empty cases:</p><ul>{items}</ul>" if items else "",
    ]


def _trust_section(metrics: Mapping[str, Any]) -> list[str]:
    """How well the per-image uncertainty ranks the errors, and the calibration error (issue 22)."""
    u, c = metrics.get("uncertainty") or {}, metrics.get("calibration") or {}
    out = []
    scores = u.get("scores") or {}
    if scores:
        pcts = list(next(iter(scores.values()))["dice_kept"])
        head = (
            "<tr><th>Per-image score</th><th>Spearman with image Dice</th><th>AURC</th><th>AURC random order</th>"
            "<th>AURC best order</th>" + "".join(f"<th>Dice kept, {_esc(p)}% to review</th>" for p in pcts) + "</tr>"
        )
        rows = []
        for name, r in scores.items():
            label = f"{name} (the <code>uncertainty</code> column)" if name == u.get("score") else _esc(name)
            cells = [r.get("spearman"), r.get("aurc"), r.get("aurc_random"), r.get("aurc_oracle")]
            cells += [r["dice_kept"].get(p) for p in pcts]
            rows.append(f"<tr><td>{label}</td>" + "".join(_cell(v) for v in cells) + "</tr>")
        out += [
            "<h2>Which predictions to trust</h2>",
            "<p>Per-image uncertainty (higher: less sure) against the per-image Dice: a useful score correlates "
            "negatively (Spearman) and has a low area under the risk-coverage curve (AURC: the mean of "
            "1 - Dice of the images kept, keeping the surest first). Dice kept: the mean Dice of the images left "
            f"when the most uncertain are sent to review (all images: {_fmt(u.get('dice_all'))}).</p>",
            "<table>\n" + head + "\n" + "\n".join(rows) + "\n</table>",
        ]
    if c.get("ece_before") is not None:
        t = f"{c['temperature']:.3g}"
        out.append(
            f"<p>Calibration: expected calibration error {_fmt(c['ece_before'])} at temperature 1, "
            f"{_fmt(c['ece_after'])} at the run's temperature {_esc(t)} "
            f"(<code>postprocess.yaml</code>; {_fmt(c.get('n_pixels'))} labelled pixels sampled).</p>"
        )
    return out


def _class_table(per_class: Mapping[str, Mapping[str, Any]]) -> str:
    head = "<tr><th>Class</th>" + "".join(f"<th>{_esc(label)}</th>" for _, label in _CLASS_COLUMNS) + "</tr>"
    rows = [
        f"<tr><td>{_esc(name)}</td>" + "".join(_cell(scores.get(k)) for k, _ in _CLASS_COLUMNS) + "</tr>"
        for name, scores in per_class.items()
    ]
    return "<table>\n" + head + "\n" + "\n".join(rows) + "\n</table>"


def _image_table(per_image_rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = ["id"] if any("id" in r for r in per_image_rows) else []
    for row in per_image_rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    head = "<tr><th>#</th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
    body = []
    for i, row in enumerate(sorted(per_image_rows, key=_sort_key), 1):
        cells = "".join(_cell(row.get(c)) if c != "id" else f"<td>{_esc(row.get(c, ''))}</td>" for c in columns)
        body.append(f'<tr><td class="num">{i}</td>{cells}</tr>')
    return "<table>\n" + head + "\n" + "\n".join(body) + "\n</table>"


def _legend() -> str:
    parts = []
    for key, (r, g, b) in ERROR_COLORS.items():
        parts.append(
            f'<span class="sw" style="background: rgb({r}, {g}, {b})"></span>'
            f"<b>{_esc(key)}</b> {_esc(ERROR_LABELS.get(key, ''))}"
        )
    return '<p class="legend">' + " ".join(parts) + "</p>"


def _thumbnails(overlay_paths: Iterable[Path], out_dir: Path) -> str:
    figs = []
    for p in overlay_paths:
        href = _href(Path(p), out_dir)
        name = _esc(Path(p).name)
        figs.append(
            f'<figure><a href="{href}"><img src="{href}" alt="{name}" loading="lazy"></a>'
            f"<figcaption>{name}</figcaption></figure>"
        )
    if not figs:
        return '<p class="note">No overlay pictures were written.</p>'
    return '<div class="thumbs">\n' + "\n".join(figs) + "\n</div>"


def write_evaluation_report(
    out_dir,
    metrics: Mapping[str, Any],
    per_image_rows: Sequence[Mapping[str, Any]],
    overlay_paths: Sequence[Path],
    title: str = "biomedseg evaluation",
    curves_png: Path | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (and ``out_dir/class_metrics.png``); return the HTML path.

    Args:
        out_dir: report folder (created if needed).
        metrics: a ``MetricAccumulator.summary()`` / ``scores_from_confusion`` dict; its scalar
            entries fill the summary table, ``per_class`` the class table and bar chart.
        per_image_rows: ``MetricAccumulator.per_image_rows()``; shown worst ``image_dice`` first.
        overlay_paths: overlay PNGs (ideally inside ``out_dir``) shown as linked thumbnails.
        title: page title.
        curves_png: optional training-curves PNG shown in its own section (copied into
            ``out_dir`` as ``curves.png`` when it lies elsewhere, e.g. in the run folder).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = metrics.get("per_class") or {}
    sections = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="note">Written {_esc(datetime.now().strftime("%Y-%m-%d %H:%M"))}. '
        "Means are over the foreground classes (all classes but the background, if one is set); "
        "pooled scores count every pixel of every image, &ldquo;mean over images&rdquo; weighs each image equally.</p>",
        "<h2>Summary</h2>",
        _summary_table(metrics),
    ]
    if metrics.get("field"):
        sections += _field_section(metrics["field"])
    sections += _trust_section(metrics)
    if per_class:
        chart = plot_class_bars(per_class, out_dir / CLASS_BARS_NAME)
        sections += [
            "<h2>Per class</h2>",
            _class_table(per_class),
            f'<p><img class="chart" src="{_href(chart, out_dir)}" alt="scores per class"></p>',
        ]
    if curves_png is not None:
        sections += [
            "<h2>Training curves</h2>",
            f'<p><img class="chart" src="{_local_href(curves_png, out_dir, CURVES_NAME)}" alt="training curves"></p>',
        ]
    sections += [
        "<h2>Overlays</h2>",
        _legend(),
        _thumbnails(overlay_paths, out_dir),
        f"<h2>Per image ({len(per_image_rows)}, worst first)</h2>",
        _image_table(per_image_rows) if per_image_rows else '<p class="note">No images.</p>',
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    out = out_dir / REPORT_NAME
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
