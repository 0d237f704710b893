"""Which field metrics a data set gets, and why.

Metric groups (``pixel`` always runs; its scores are :mod:`.pixel`'s):

==============  ==========================================================  =============
group           scores (per-image columns)                                   cost
==============  ==========================================================  =============
``boundary``    ``hd95``, ``assd``, ``nsd`` (+ ``_um``)                       cheap
``object``      ``object_f1``, ``object_dice``, ``object_hausdorff``          seconds/image
``instance``    ``aji``, ``aji_plus``, ``pq``, ``sq``, ``rq``, ``ap``         cheap
``thin``        ``rand``, ``vi_score``, ``vi``, ``cldice``                    cheap
``shape``       ``hc_px``, ``hc_true_px``, ``hc_error_px``, ``hc_error_rel``,  cheap
                ``hc_error_mm``
==============  ==========================================================  =============

A metric name may stand for its group (``"aji"`` -> ``instance``); ``all`` is every group.
The choice, first that applies: ``--metrics`` (the caller's ``requested``), then
``dataset.json`` ``"metrics"``, then the fingerprint of the truth masks (:func:`fingerprint`):

- thin structures (foreground narrower than ``THIN_WIDTH_PX`` on median; or a membrane map:
  foreground over half the image, split by a background under a third as wide as the
  segments) -> ``boundary`` + ``thin``;
- many small objects (median >= ``MANY_OBJECTS`` objects per image, median object below
  ``SMALL_OBJECT_FRACTION`` of the image) -> ``boundary`` + ``object`` + ``instance``;
- one large object (median 1 object per image, at least ``LARGE_OBJECT_FRACTION`` of it) ->
  ``boundary`` + ``shape``;
- otherwise ``boundary`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from biomedseg.core.errors import UserError

__all__ = ["GROUPS", "MetricChoice", "choose_metrics", "fingerprint", "parse_metric_names"]

GROUPS = {
    "pixel": ("dice", "iou", "precision", "recall", "f1", "image_dice"),
    "boundary": ("hd95", "assd", "nsd"),
    "object": ("object_f1", "object_dice", "object_hausdorff"),
    "instance": ("aji", "aji_plus", "pq", "sq", "rq", "ap"),
    "thin": ("rand", "vi_score", "vi", "cldice"),
    "shape": ("hc_px", "hc_true_px", "hc_error_px", "hc_error_rel", "hc_error_mm"),
}
ORDER = tuple(GROUPS)
#: mean object width (pixels, area / skeleton length) below which structures count as thin
THIN_WIDTH_PX = 6.0
#: median objects per image from which a data set has "many small objects"
MANY_OBJECTS = 5
SMALL_OBJECT_FRACTION = 0.02
LARGE_OBJECT_FRACTION = 0.05
#: truth masks the fingerprint reads at most (spread evenly over the split)
FINGERPRINT_IMAGES = 12


@dataclass(frozen=True)
class MetricChoice:
    """``groups``: the chosen groups in ``ORDER`` (``pixel`` first); ``reason``: one sentence."""

    groups: tuple[str, ...]
    reason: str
    source: str  # "--metrics" | "dataset.json" | "fingerprint"
    fingerprint: dict = field(default_factory=dict)

    def __contains__(self, group: str) -> bool:
        return group in self.groups


def parse_metric_names(names, where: str = "--metrics") -> tuple[str, ...]:
    """Groups named by ``names`` (a comma-separated string or a list of group/metric names)."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    wanted = {"pixel"}
    for raw in names:
        name = str(raw).strip().lower().replace("-", "_")
        if not name:
            continue
        if name == "all":
            wanted.update(GROUPS)
            continue
        group = name if name in GROUPS else next((g for g, keys in GROUPS.items() if name in keys), None)
        if group is None:
            raise UserError(
                f"{where}: unknown metric {raw!r} (groups: {', '.join(GROUPS)}, all; or a metric name "
                f"such as aji, pq, hd95)"
            )
        wanted.add(group)
    return tuple(g for g in ORDER if g in wanted)


def _widths(mask: np.ndarray) -> float | None:
    """Mean width (pixels) of the True structures of ``mask``: area / skeleton length."""
    from skimage.morphology import skeletonize

    if mask.sum() < 16:
        return None
    skel = int(skeletonize(mask).sum())
    return float(mask.sum()) / max(skel, 1)


def fingerprint(masks, background: int | None = 0) -> dict:
    """Object statistics of truth index masks (an iterable of ``(H, W)`` arrays): median objects
    per image, median object area as a fraction of the image, median width of the foreground and of
    the background (pixels), and the mean foreground fraction."""
    from scipy import ndimage

    counts, fractions, fg_w, bg_w, fg_frac = [], [], [], [], []
    for m in masks:
        m = np.asarray(m)
        fg = m != background if background is not None else m > 0
        lab, n = ndimage.label(fg)
        counts.append(n)
        if n:
            fractions.extend((np.bincount(lab.ravel())[1:] / fg.size).tolist())
        fg_frac.append(float(fg.mean()))
        for store, part in ((fg_w, fg), (bg_w, ~fg)):
            w = _widths(part)
            if w is not None:
                store.append(w)

    def med(v):
        return float(np.median(v)) if v else float("nan")

    return {
        "objects_per_image": med(counts),
        "object_fraction": med(fractions),
        "foreground_width_px": med(fg_w),
        "background_width_px": med(bg_w),
        "foreground_fraction": float(np.mean(fg_frac)) if fg_frac else 0.0,
    }


def _from_fingerprint(fp: dict) -> tuple[tuple[str, ...], str]:
    n, frac = fp["objects_per_image"], fp["object_fraction"]
    if fp["foreground_width_px"] <= THIN_WIDTH_PX:
        return ("boundary", "thin"), (
            f"thin structures: the foreground is {fp['foreground_width_px']:.1f} px wide on "
            f"median (<= {THIN_WIDTH_PX:g})"
        )
    if fp["foreground_fraction"] > 0.5 and fp["background_width_px"] * 3 <= fp["foreground_width_px"]:
        return ("boundary", "thin"), (
            f"thin structures: a membrane map, the background between segments is "
            f"{fp['background_width_px']:.1f} px wide on median, under a third of the "
            f"segments' {fp['foreground_width_px']:.1f} px"
        )
    if n >= MANY_OBJECTS and frac < SMALL_OBJECT_FRACTION:
        return ("boundary", "object", "instance"), (
            f"many small objects: {n:g} objects per image on median, each {100 * frac:.2f}% of the image"
        )
    if n == 1 and frac >= LARGE_OBJECT_FRACTION:
        return ("boundary", "shape"), f"one large object per image ({100 * frac:.1f}% of the image on median)"
    return ("boundary",), f"no special structure ({n:g} objects per image on median): boundary metrics only"


def choose_metrics(requested=None, meta: dict | None = None, masks=None, background: int | None = 0) -> MetricChoice:
    """The groups to compute: ``requested`` (``--metrics``) first, then ``meta["metrics"]``
    (``dataset.json``), then :func:`fingerprint` of ``masks`` (an iterable of truth index masks)."""
    if requested:
        return MetricChoice(parse_metric_names(requested), "chosen with --metrics", "--metrics")
    listed = (meta or {}).get("metrics")
    if listed:
        if isinstance(listed, str):
            listed = [listed]
        return MetricChoice(
            parse_metric_names(listed, "dataset.json: metrics"), "listed in dataset.json", "dataset.json"
        )
    fp = fingerprint(masks or [], background)
    groups, reason = _from_fingerprint(fp)
    return MetricChoice(("pixel",) + groups, reason, "fingerprint", fp)
