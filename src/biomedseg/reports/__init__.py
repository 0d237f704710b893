"""Reports: overlay pictures, training curves and the static HTML evaluation report.

- :mod:`biomedseg.core.render` (drawing, below reports): ``error_overlay`` (TP/FP/FN colours, ``ERROR_COLORS``),
  ``class_overlay``, ``colorize_mask``, ``overlay_panel``, ``to_display_rgb``.
- :mod:`biomedseg.reports.curves`: ``plot_curves(metrics_csv, out_png)``,
  ``plot_class_bars(per_class, out_png)``.
- :mod:`biomedseg.reports.style`: ``CSS``, the one stylesheet of the three HTML reports.
- :mod:`biomedseg.reports.html`: ``write_evaluation_report(out_dir, metrics, per_image_rows,
  overlay_paths)``.

Nothing is imported here: import the submodule you need (matplotlib is only loaded when a plot
is drawn, so importing the package stays fast).
"""
