"""The contact sheet of ``biomedseg suggest``: one self-contained HTML page (pictures inlined).

Receives plain data: the ranked rows (dicts of the CSV's columns) and per row three ``uint8``
pictures (``thumbnail``, ``overlay``, ``uncertainty``, each ``(h, w, 3)`` or ``(h, w)``).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

#: Uncertainty colours from 0 to 1: black, purple, orange, pale yellow.
_RAMP = np.array([[0, 0, 0], [90, 20, 120], [230, 100, 30], [255, 250, 180]], dtype=np.float64)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:6px;vertical-align:top;text-align:left}
img{max-width:220px;image-rendering:pixelated}td.why{max-width:28em}.num{font-variant-numeric:tabular-nums}
"""


def uncertainty_colours(values: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in ``[0, 1]`` -> ``(H, W, 3) uint8`` through :data:`_RAMP`."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.minimum(v.astype(np.int64), len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return np.rint(_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).astype(np.uint8)


def png_data_uri(picture: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value if value is not None else ""))


def suggest_html(rows: list[dict], pictures: list[dict], title: str, score_columns: list[str]) -> str:
    """The page: one table row per suggestion with its pictures, scores and why it was picked."""
    head = "".join(
        f"<th>{html.escape(c)}</th>" for c in ["#", "image", "prediction", "uncertainty", "file", *score_columns, "why"]
    )
    body = []
    for row, pics in zip(rows, pictures):
        imgs = "".join(
            f'<td><img alt="{k}" src="{png_data_uri(pics[k])}"></td>' for k in ("thumbnail", "overlay", "uncertainty")
        )
        scores = "".join(f'<td class="num">{_fmt(row.get(c))}</td>' for c in score_columns)
        body.append(
            f"<tr><td>{row['rank']}</td>{imgs}<td>{html.escape(str(row['file']))}</td>{scores}"
            f'<td class="why">{html.escape(row["why"])}</td></tr>'
        )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        "<p>Images to label next, best first: uncertain predictions that differ from the images picked "
        "before them. Prediction: classes over the image; uncertainty: per-pixel entropy (dark = sure).</p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table></body></html>\n"
    )


def write_suggest_sheet(path, rows: list[dict], pictures: list[dict], title: str, score_columns: list[str]) -> Path:
    """Write :func:`suggest_html` to ``path`` (atomic)."""
    from biomedseg.io.writers import write_text

    write_text(path, suggest_html(rows, pictures, title, score_columns))
    return Path(path)
