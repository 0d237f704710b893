"""The working scale: how much the planner shrinks the images before the network sees them.

nnU-Net resamples every dataset to a target spacing; here the rule follows from what the
fingerprint measured (:func:`~biomedseg.planning.planner.fingerprint_from_samples`):

* **context**: a patch should hold ``CONTEXT_DIAMETERS`` typical (90th-percentile) objects, or the
  whole image when that is smaller. When that native context is larger than the patch the budget
  affords (``cap``), the images are shrunk until it fits (``scale = cap / context``);
* **resolution**: the thinnest foreground structure keeps at least ``THIN_STRUCTURE_WIDTH`` pixels
  of width (so thin structures, already under it, keep scale 1), and the small objects (10th
  percentile) at least ``MIN_OBJECT_PIXELS`` of diameter;
* a scale above ``MAX_USEFUL_SCALE`` is not worth resampling: scale 1;
* with scribbles (partial labels), the object sizes are the strokes' extents (lower bounds) and the
  widths are unknown: the floor then follows from the small objects alone.

The scale is snapped so that a patch of ``cap`` pixels is a whole number of native pixels.
"""

from __future__ import annotations

#: a patch holds at least this many typical (90th-percentile) object diameters of context
CONTEXT_DIAMETERS = 4
#: mean width (pixels) below which a foreground class is a thin structure (membranes, vessels):
#: the working scale never brings a class under it, so thin structures keep scale 1
THIN_STRUCTURE_WIDTH = 8.0
#: small (10th-percentile) objects keep at least this diameter (pixels) at the working scale: one
#: cell of the 16x-pooled bottleneck of a 5-level U-Net
MIN_OBJECT_PIXELS = 16.0
#: shrinking by less than this is not worth the resampling (and the lost detail): scale 1
MAX_USEFUL_SCALE = 0.8


def _foreground(fp: dict, key: str) -> dict[str, float]:
    names, bg = fp.get("class_names", []), fp.get("background")
    return {c: float(v) for c, v in fp.get(key, {}).items() if c not in names or names.index(c) != bg}


def _from_strokes(fp: dict) -> set[str]:
    """Classes whose object sizes come from scribble strokes (``fingerprint["object_size_source"]``)."""
    return {c for c, src in (fp.get("object_size_source") or {}).items() if src == "strokes"}


def _widths_known(fp: dict) -> bool:
    """Widths were measured, or the sizes come from strokes (partial labels: a stroke's width is the
    annotator's, not the object's, so only the small objects' sizes bound the floor)."""
    return bool(_foreground(fp, "structure_width")) or bool(_from_strokes(fp))


def scale_floor(fp: dict) -> tuple[float, str]:
    """The smallest scale that keeps the thinnest structure and the small objects resolvable."""
    floor, why = 0.0, []
    widths = _foreground(fp, "structure_width")
    if widths:
        name, width = min(widths.items(), key=lambda kv: kv[1])
        floor = THIN_STRUCTURE_WIDTH / width
        why.append(f"the thinnest class {name} ({width:.1f}px wide) keeps >= {THIN_STRUCTURE_WIDTH:.0f}px")
    small = _foreground(fp, "object_diameter_p10")
    if small:
        name, diam = min(small.items(), key=lambda kv: kv[1])
        if MIN_OBJECT_PIXELS / diam > floor:
            floor = MIN_OBJECT_PIXELS / diam
        why.append(f"small {name} objects ({diam:.0f}px, 10th percentile) keep >= {MIN_OBJECT_PIXELS:.0f}px")
    return floor, "; ".join(why)


def plan_working_scale(fp: dict, cap: int) -> dict:
    """``{"value": scale, "reason": ...}`` for patches of at most ``cap`` pixels (see the module)."""
    h, w = fp["median_shape"]
    side = max(h, w)
    large = max(_foreground(fp, "object_diameter_p90").values(), default=0.0)
    context = min(float(side), CONTEXT_DIAMETERS * large)
    strokes = " of the labelled strokes, a lower bound" if _from_strokes(fp) else ""
    what = (
        f"the whole {h}x{w} image"
        if context >= side
        else f"{CONTEXT_DIAMETERS} typical objects ({large:.0f}px, 90th percentile{strokes})"
    )
    if context <= cap:
        return {"value": 1.0, "reason": f"{what} fits a {cap}px patch at native resolution"}
    if not _foreground(fp, "object_diameter_p10") or not _widths_known(fp):
        return {"value": 1.0, "reason": "structure widths and small-object sizes not measured: native resolution"}
    floor, floor_why = scale_floor(fp)
    if floor >= MAX_USEFUL_SCALE:
        return {
            "value": 1.0,
            "reason": f"{what} needs {context:.0f}px of context, more than a {cap}px patch, "
            f"but shrinking below {floor:.2f} loses detail ({floor_why})",
        }
    scale = max(cap / context, floor)
    if scale >= MAX_USEFUL_SCALE:
        return {
            "value": 1.0,
            "reason": f"{what} needs {context:.0f}px of context, a little more than a {cap}px "
            f"patch: shrinking to {scale:.2f} is not worth the resampling",
        }
    scale = cap / round(cap / scale)  # a cap-pixel patch spans a whole number of native pixels
    reason = (
        f"{what} ({context:.0f}px) fits a {cap}px patch at scale {scale:.3g}: the network sees more "
        f"context and the budget more epochs (fewer pixels)"
    )
    if floor_why:
        reason += f"; the floor is {floor:.2f} ({floor_why})"
    return {"value": round(scale, 6), "reason": reason}
