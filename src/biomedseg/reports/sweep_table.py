"""The table of a sweep: ``table.md`` and ``table.csv``, one row per trial (plain data in).

Rows arrive already sorted (best validation Dice first) as ``{column: value}``; the Markdown
shows numbers with 4 decimals (parameter values as given), the CSV keeps them exact.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from biomedseg.io.writers import write_text
from biomedseg.reports.compare import _markdown


def write_sweep_table(
    rows: Sequence[dict], columns: Sequence[str], md_path, csv_path, title: str, notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write ``rows`` (missing cells empty in the CSV, ``n/a`` in the Markdown) to both files."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
    write_text(csv_path, buf.getvalue())
    blocks = [("h1", title), ("table", list(columns), [[row.get(c) for c in columns] for row in rows])]
    blocks += [("list", list(notes))] if notes else []
    write_text(md_path, _markdown(blocks))
    return Path(md_path), Path(csv_path)
