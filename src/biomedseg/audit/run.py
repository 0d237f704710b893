"""Data audit: the check to run before training (``biomedseg audit DATA --out DIR``).

:func:`run_audit` reads every image and mask once (plus up to 200 masks, evenly spread, read
first to fix the palette) and never fails on dirty data: unreadable files, unpaired images or masks,
several masks for one image, size mismatches, mixed mask encodings are *findings*. Only a
missing folder or a folder without images raises ``UserError``.

It reports

- **inventory**: counts, formats, sizes, channels, bit depth, grey-stored-as-RGB, problems,
  physical pixel size (µm; ``dataset.json`` ``pixel_size`` or the files' OME-XML / resolution
  tags / OME-Zarr scale) per image with the distinct values (mixed sizes are a finding);
- **masks**: encoding (class indices, 0/255, grey levels, RGB colours), palette, off-palette
  (damaged) pixels per file, class pixel share, share of images containing each class, empty
  masks, connected objects per class (8-connectivity) with area percentiles, a recommended
  minimum object area and class weights;
- **intensities**: per-channel mean/std (the normalisation training uses), 0.5/50/99.5
  percentiles, value range (16-bit: the bits actually used);
- **near duplicates** (:mod:`biomedseg.audit.duplicates`): groups of images that are the same
  picture up to noise / JPEG / a small shift (/ a flip with ``check_flips``), with the image
  distance and the mask agreement (Dice after alignment) of each verified pair; groups whose
  masks conflict (Dice < 0.9 or one empty, one not) and groups that straddle the
  ``dataset.json`` split (leakage) are flagged;
- ``fingerprint``: the subset planning needs (sizes, channels, intensities, class shares,
  object sizes, class weights, pixel size).

With ``out`` it writes ``audit.json``; :func:`biomedseg.reports.audit.page.audit_with_report`
also writes ``audit.html`` and PNG pictures in ``audit_files/`` (``biomedseg audit``).

The work is split over :mod:`~biomedseg.audit.passes` (palette choice and the one
reading pass), :mod:`~biomedseg.audit.duplicate_groups` (near-duplicate groups, mask
agreement, leakage), :mod:`~biomedseg.audit.sections` (the sections of the audit dict
and the fingerprint) and :mod:`~biomedseg.audit.findings` (the problems reported); this
module runs them, writes ``audit.json`` and formats the text summary.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from biomedseg.audit import duplicates as dup
from biomedseg.audit.duplicate_groups import (
    CONFLICT_DICE,
    MAX_PAIR_PICTURES,
    MAX_PAIRS_PER_GROUP,
    find_duplicate_groups,
)
from biomedseg.audit.findings import EMPTY_WARNING, RARE_CLASS, SEVERITY_ORDER, audit_findings
from biomedseg.audit.image_measurements import THUMB
from biomedseg.audit.passes import (
    PALETTE_SAMPLE,
    choose_palette,
    measure_dataset,
    measure_pixel_sizes,
    sample_mask_tables,
)
from biomedseg.audit.sections import (
    describe_pixel_sizes,
    duplicates_section,
    fingerprint_section,
    intensity_section,
    inventory_section,
    masks_section,
)
from biomedseg.data.inventory import Scan, scan_data
from biomedseg.io.writers import write_json

__all__ = [
    "AUDIT_VERSION",
    "CONFLICT_DICE",
    "EMPTY_WARNING",
    "MAX_PAIRS_PER_GROUP",
    "MAX_PAIR_PICTURES",
    "PALETTE_SAMPLE",
    "RARE_CLASS",
    "SEVERITY_ORDER",
    "AuditRun",
    "audit_dataset",
    "format_audit_summary",
    "run_audit",
    "save_audit",
]

log = logging.getLogger("biomedseg")

AUDIT_VERSION = 1


@dataclass
class AuditRun:
    """One finished audit: the ``audit`` dict (with internal entries) and what its pictures are
    drawn from (``scan``, ``res`` of the reading pass, ``dups`` with the pair handles, ``pal``)."""

    audit: dict
    scan: Scan
    res: dict
    dups: dict
    pal: dict
    t_start: float

    def result(self, pictures: dict | None = None) -> dict:
        """The plain audit dict (``audit.json``) with the total time so far (and ``pictures``)."""
        if pictures is not None:
            self.audit["pictures"] = pictures
        self.audit["timing"]["total_s"] = round(time.perf_counter() - self.t_start, 2)
        return _public(self.audit)


def audit_dataset(data=None, images=None, masks=None, check_flips: bool = False, progress: bool = True) -> AuditRun:
    """Measure a data set (see :func:`run_audit`); nothing is written."""
    t_start = time.perf_counter()
    scan = scan_data(data, images, masks)
    early: list[dict] = []
    pal = choose_palette(scan, sample_mask_tables(scan), early)
    t_masks = time.perf_counter()
    res = measure_dataset(scan, pal, progress)
    res["pixel_sizes"] = measure_pixel_sizes(scan)
    t_images = time.perf_counter()
    dups = find_duplicate_groups(scan, res, pal, check_flips, progress)
    t_dups = time.perf_counter()
    audit: dict = {
        "version": AUDIT_VERSION,
        "data": {
            "root": str(scan.root),
            "images": str(scan.images_dir),
            "masks": str(scan.masks_dir) if scan.masks_dir else None,
            "dataset_json": scan.meta is not None,
        },
        "settings": {
            "check_flips": bool(check_flips),
            "conflict_dice": CONFLICT_DICE,
            "duplicate_threshold": dup.THRESHOLD,
            "thumbnail": THUMB,
        },
        "inventory": inventory_section(scan, res),
        "masks": masks_section(scan, res, pal),
        "intensity": intensity_section(res),
        "duplicates": duplicates_section(dups),
        "_early_findings": early,
    }
    audit["findings"] = audit_findings(audit, scan)
    audit["fingerprint"] = fingerprint_section(audit)
    audit["timing"] = {
        "palette_s": round(t_masks - t_start, 2),
        "images_s": round(t_images - t_masks, 2),
        "duplicates_s": round(t_dups - t_images, 2),
    }
    return AuditRun(audit, scan, res, dups, pal, t_start)


def save_audit(out, run: AuditRun, pictures: dict | None = None) -> dict:
    """Write ``out/audit.json`` (creating ``out``) and return the plain audit dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = run.result(pictures)
    write_json(out / "audit.json", result)
    return result


def run_audit(data=None, out=None, images=None, masks=None, check_flips: bool = False, progress: bool = True) -> dict:
    """Audit a data set; write ``out/audit.json`` when ``out`` is given.

    The HTML page and its pictures are drawn by
    :func:`biomedseg.reports.audit.page.audit_with_report` (what ``biomedseg audit`` runs).

    Args:
        data: DATA folder (``images/``, ``masks/``, optional ``dataset.json``) or a folder of
            images with ``*_mask`` files; ``images``/``masks`` override the folders.
        out: report folder (``None``: nothing is written, the dict is only returned).
        check_flips: also find duplicates that are flipped copies (left-right / up-down).
        progress: show progress bars on stderr.

    Returns:
        The audit dict (see ``docs`` / ``audit.json``): ``inventory``, ``masks``,
        ``intensity``, ``duplicates``, ``findings`` (most serious first), ``fingerprint``.

    Raises:
        UserError: a given folder is missing or holds no image at all.
    """
    run = audit_dataset(data, images, masks, check_flips, progress)
    return run.result() if out is None else save_audit(out, run)


def _public(audit: dict) -> dict:
    """The audit without internal objects (``_worst`` pair handles)."""
    clean = dict(audit)
    dups = dict(clean["duplicates"])
    dups["groups"] = [{k: v for k, v in g.items() if not k.startswith("_")} for g in dups["groups"]]
    clean["duplicates"] = dups
    clean.pop("_early_findings", None)
    return clean


def format_audit_summary(audit: dict, limit: int = 12) -> str:
    """A short text summary: what was found, then the problems, most serious first."""
    inv, masks, it = audit["inventory"], audit.get("masks", {}), audit.get("intensity", {})
    lines = [
        f"audit of {audit['data']['root']}: {inv['n_image_ids']} images, {inv['n_masks']} masks, {inv['n_pairs']} pairs"
    ]
    if masks.get("classes"):
        shares = ", ".join(f"{c} {v:.3f}" for c, v in masks["class_pixel_fraction"].items())
        lines.append(
            f"  masks: {masks.get('encoding')} ({masks.get('palette_description')}); "
            f"pixel share {shares}; empty masks {100 * masks.get('empty_mask_fraction', 0):.1f}%"
        )
    if it:
        lines.append(
            "  intensity: mean "
            + ", ".join(f"{v:.4g}" for v in it["mean"])
            + "; std "
            + ", ".join(f"{v:.4g}" for v in it["std"])
            + f" ({', '.join(it['channel_names'])})"
        )
    if inv.get("pixel_size", {}).get("known"):
        lines.append(f"  pixel size: {describe_pixel_sizes(inv['pixel_size'])}")
    if masks.get("recommended_min_object_area"):
        shown = {c: a for c, a in masks["recommended_min_object_area"].items() if a}
        if shown:
            lines.append("  min object area: " + ", ".join(f"{c} {a} px" for c, a in shown.items()))
    findings = audit.get("findings", [])
    if not findings:
        lines.append("no problems found")
    else:
        n_err = sum(1 for f in findings if f["severity"] == "error")
        n_warn = sum(1 for f in findings if f["severity"] == "warning")
        lines.append(f"problems: {n_err} errors, {n_warn} warnings (most serious first)")
        for f in findings[:limit]:
            lines.append(f"  {f['severity'].upper():7s} {f['message']}")
        if len(findings) > limit:
            lines.append(f"  ... and {len(findings) - limit} more in audit.json")
    return "\n".join(lines)
