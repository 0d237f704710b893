"""The one stylesheet of the HTML reports (evaluation, audit, comparison): inlined in each page,
so a report opens offline with no external CSS."""

from __future__ import annotations

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #666; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #ddd; }
img.chart { margin: 0.3em 0; }
img.pair { border-color: #aaa; }
.legend span.sw { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
  border: 1px solid #555; margin: 0 0.3em 0 1em; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.8em; }
.thumbs figure { margin: 0; max-width: 600px; }
.thumbs img:not(.pair) { max-width: 420px; max-height: 280px; border-color: #aaa; }
.thumbs figcaption { font-size: 0.8em; word-break: break-all; }
li.error { color: #a00000; } li.warning { color: #8a5a00; } li.info { color: #333; }
span.sev { font-weight: bold; text-transform: uppercase; font-size: 0.8em; margin-right: 0.5em; }
tr.conflict td { background: #fff0f0; }
"""
