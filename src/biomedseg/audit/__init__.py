"""Data audit: measurements, near duplicates, findings and the data fingerprint (plain data).

- :mod:`biomedseg.audit.run`: :func:`~biomedseg.audit.run.run_audit` (the audit dict, optionally
  ``audit.json``) and :func:`~biomedseg.audit.run.format_audit_summary`;
- :mod:`biomedseg.audit.split`: :func:`~biomedseg.audit.split.write_split` (``biomedseg split``).

The audit reads DATA folders through :mod:`biomedseg.data` and never imports
:mod:`biomedseg.reports`: the HTML page and its pictures are written by
:func:`biomedseg.reports.audit.page.audit_with_report`. Nothing is imported here: import the
submodule you need.
"""
