"""Post-processing of predicted probabilities into masks (and instance labels).

Small pure functions over numpy arrays (scipy / scikit-image), chained by a
:class:`PostprocessConfig` that a run keeps as ``RUN/postprocess.yaml`` (written by
``biomedseg tune-postprocess`` or by hand). Every step is optional; an empty config is plain
argmax. The chain, per foreground class ``c`` (keys of ``classes``: class names or indices):

1. **decision**: per-class probability thresholds. Binary (one foreground class): foreground
   where ``p_c >= threshold``. Multiclass: argmax of ``p_k * s_k`` with the scale
   ``s_c = (1 - t_c) / t_c`` (background and classes without threshold: 1), which is exactly the
   binary rule when there are two classes;
2. ``opening_radius`` then ``closing_radius``: binary opening/closing with a disk;
3. ``fill_holes_area``: fill holes (background regions enclosed by the class, not touching the
   image border) up to this many pixels; ``-1`` fills all holes;
4. ``min_object_area``: remove connected objects (8-connected) smaller than this;
5. ``keep_largest``: keep only the largest object;
6. ``watershed``: split touching objects: distance transform, normalised per object by its
   maximum, markers = connected regions where it is ``>= marker_threshold``, watershed of the
   negated distance inside the object -> an instance label image for the class;
7. **gating** (whole image): when the total foreground area after the steps is below
   ``gating.min_total_area``, the maximum foreground probability is below
   ``gating.min_max_probability``, or the image-level classifier's probability (a model trained
   with ``--classifier-head``; ``image_probability`` below) is below
   ``gating.min_classifier_probability``, the image is judged negative and gets an empty mask.

Pixels removed from class ``c`` become background; pixels added by closing/hole filling take
class ``c`` only where the mask was background.
"""

from __future__ import annotations

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.core.labels import class_argmax
from biomedseg.runs.layout import POSTPROCESS as FILENAME  # messages name the file
from biomedseg.runs.postprocess import (  # noqa: F401  (the chain's records, re-exported)
    ClassSteps,
    GatingConfig,
    PostprocessConfig,
    WatershedConfig,
    load_postprocess,
    save_postprocess,
)

# ---------------------------------------------------------------- class resolution


def class_index(key: str, n_classes: int, class_names: list[str] | None = None) -> int:
    """Index of a config key (a class name, or an index as text); unknown keys raise UserError."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    key = str(key)
    if key in names:
        return names.index(key)
    if key.isdigit() and int(key) < n_classes:
        return int(key)
    raise UserError(f"{FILENAME}: class {key!r} is not one of {', '.join(names)}")


def resolve_classes(
    cfg: PostprocessConfig, n_classes: int, class_names: list[str] | None = None
) -> dict[int, ClassSteps]:
    """Config keys (class names or indices) -> ``{class index: steps}``; unknown keys raise UserError."""
    return {class_index(key, n_classes, class_names): steps for key, steps in cfg.classes.items()}


def foreground(n_classes: int, background: int | None) -> list[int]:
    fg = [c for c in range(n_classes) if c != background]
    return fg or list(range(n_classes))


# ---------------------------------------------------------------- steps (pure functions)


def class_scales(thresholds: dict[int, float], n_classes: int) -> np.ndarray:
    """``(K,)`` multipliers ``(1 - t) / t`` for classes with a threshold, 1 elsewhere."""
    s = np.ones(n_classes, np.float32)
    for c, t in thresholds.items():
        if t is not None:
            s[c] = (1.0 - t) / t
    return s


def decide(proba: np.ndarray, thresholds: dict[int, float] | None = None, background: int | None = 0) -> np.ndarray:
    """``(K, ...)`` probabilities -> ``uint8`` class indices with per-class thresholds.

    Binary (``K == 2`` with a background): class ``fg`` where ``p_fg >= t`` (default 0.5 gives
    argmax with ties going to the foreground). Otherwise argmax of the scaled probabilities.
    """
    p = np.asarray(proba)
    k = p.shape[0]
    thresholds = {c: t for c, t in (thresholds or {}).items() if t is not None}
    if k == 2 and background in (0, 1):
        fg = 1 - background
        t = thresholds.get(fg)
        if t is None:
            return class_argmax(p)
        return np.where(p[fg] >= t, fg, background).astype(np.uint8)
    if not thresholds:
        return class_argmax(p)
    s = class_scales(thresholds, k).reshape((k,) + (1,) * (p.ndim - 1))
    return (p * s).argmax(0).astype(np.uint8)


def _disk(radius: int) -> np.ndarray:
    from skimage.morphology import disk

    return disk(int(radius)).astype(bool)


def _morphology(op, mask: np.ndarray, radius: int) -> np.ndarray:
    """``op(mask, structure=disk)`` on the mask edge-padded by the radius (the image border
    behaves as if the edge pixels continued), cropped back; a no-op for ``radius <= 0``."""
    if radius <= 0 or not mask.any():
        return mask
    r = int(radius)
    padded = np.pad(mask, r, mode="edge")
    return op(padded, structure=_disk(r))[r:-r, r:-r]


def binary_open(mask: np.ndarray, radius: int) -> np.ndarray:
    """Opening with a disk (the image border behaves as if the edge pixels continued)."""
    from scipy import ndimage as ndi

    return _morphology(ndi.binary_opening, mask, radius)


def binary_close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Closing with a disk (no erosion from the image border)."""
    from scipy import ndimage as ndi

    return _morphology(ndi.binary_closing, mask, radius)


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components ``(labels int32, n)``."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    return lab.astype(np.int32, copy=False), int(n)


def fill_holes(mask: np.ndarray, max_area: int = -1) -> np.ndarray:
    """Fill holes (4-connected background regions not touching the border) of at most
    ``max_area`` pixels; ``max_area < 0`` fills all, ``0`` none."""
    from scipy import ndimage as ndi

    if max_area == 0 or not mask.any():
        return mask
    bg, n = ndi.label(~mask)
    if n == 0:
        return mask
    border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    areas = np.bincount(bg.ravel(), minlength=n + 1)
    fill = np.ones(n + 1, bool)
    fill[0] = False
    fill[border] = False
    if max_area > 0:
        fill &= areas <= max_area
    return mask | fill[bg]


def remove_small_objects(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove 8-connected objects with fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    lab, n = label_objects(mask)
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    keep = areas >= min_area
    keep[0] = False
    return keep[lab]


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected object (ties: the first in raster order)."""
    if not mask.any():
        return mask
    lab, n = label_objects(mask)
    if n <= 1:
        return mask
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    areas[0] = 0
    return lab == int(areas.argmax())


def watershed_split(
    mask: np.ndarray, marker_threshold: float = 0.5, min_marker_area: int = 1, compactness: float = 0.0
) -> np.ndarray:
    """Instance labels ``(H, W) int32`` of ``mask`` with touching objects split (step 6)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    objects, n = label_objects(mask)
    dist = ndi.distance_transform_edt(mask)
    peak = ndi.maximum(dist, objects, index=np.arange(n + 1))
    peak = np.asarray(peak, np.float64)
    peak[0] = 1.0
    norm = dist / peak[objects]
    markers, m = label_objects((norm >= marker_threshold) & mask)
    if min_marker_area > 1 and m:
        areas = np.bincount(markers.ravel(), minlength=m + 1)
        small = areas < min_marker_area
        small[0] = False
        markers = np.where(small[markers], 0, markers)
    lab = watershed(-dist, markers, mask=mask, compactness=compactness)
    # objects that lost all their markers keep their connected-component label
    missing = mask & (lab == 0)
    if missing.any():
        extra, _ = label_objects(missing)
        lab = np.where(missing, extra + lab.max(), lab)
    out, _, _ = _relabel(lab)
    return out


def _relabel(lab: np.ndarray):
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(lab.astype(np.int32, copy=False))


def combine_instances(instances: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """One ``(H, W) int32`` label image from per-class labels (ids offset so they stay unique)."""
    out = np.zeros(shape, np.int32)
    offset = 0
    for c in sorted(instances):
        lab = instances[c]
        on = lab > 0
        out[on] = lab[on] + offset
        offset += int(lab.max()) if on.any() else 0
    return out


# ---------------------------------------------------------------- the chain


def class_mask_steps(binary: np.ndarray, steps: ClassSteps, scale: float = 1.0) -> np.ndarray:
    """Steps 2-5 on one class's boolean mask. ``scale`` (< 1 on downsampled images) scales radii
    linearly and areas quadratically."""
    m = binary
    m = binary_open(m, int(round(steps.opening_radius * scale)))
    m = binary_close(m, int(round(steps.closing_radius * scale)))
    if steps.fill_holes_area:
        m = fill_holes(
            m,
            steps.fill_holes_area
            if steps.fill_holes_area < 0
            else max(1, int(round(steps.fill_holes_area * scale * scale))),
        )
    if steps.min_object_area:
        m = remove_small_objects(m, max(1, int(round(steps.min_object_area * scale * scale))))
    if steps.keep_largest:
        m = keep_largest(m)
    return m


def is_gated(
    gating: GatingConfig,
    area: float,
    max_probability: float,
    image_probability: float | None = None,
    scale: float = 1.0,
) -> bool:
    """Whether an image is judged negative (step 7): ``area`` foreground pixels after steps 1-6,
    largest foreground probability ``max_probability``, the head's ``image_probability`` (``None``:
    no head, criterion skipped); ``scale`` as in :func:`class_mask_steps`."""
    if gating.min_total_area and area < gating.min_total_area * scale * scale:
        return True
    if gating.min_max_probability and max_probability < gating.min_max_probability:
        return True
    return bool(
        gating.uses_classifier
        and image_probability is not None
        and image_probability < gating.min_classifier_probability
    )


def apply_postprocess(
    proba: np.ndarray,
    cfg: PostprocessConfig | None,
    class_names: list[str] | None = None,
    background: int | None = 0,
    instances: bool | None = None,
    scale: float = 1.0,
    image_probability: float | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray] | None]:
    """``(K, H, W)`` float probabilities -> ``(mask (H, W) uint8, instances)``.

    ``instances``: ``{class index: (H, W) int32 labels}`` for every foreground class when
    ``instances=True`` (watershed where configured, connected components otherwise); with
    ``instances=None`` only for classes with a watershed step (``None`` when there is none).
    ``image_probability``: the classifier head's probability for the image
    (``SlidingWindowPredictor.last_image_probability``), used by
    ``gating.min_classifier_probability``; ``None`` skips that criterion. ``cfg=None`` is plain
    argmax. ``proba`` are the probabilities at the chain's calibration ``temperature`` (applied by
    the caller, e.g. the predictor's softmax): ``tune-postprocess`` tunes the thresholds and the
    gate on tempered probabilities.
    """
    p = np.asarray(proba, dtype=np.float32)
    k = p.shape[0]
    cfg = cfg or PostprocessConfig()
    per_class = resolve_classes(cfg, k, class_names)
    fg = foreground(k, background)
    bg = background if background is not None else 0
    mask = decide(p, {c: s.threshold for c, s in per_class.items()}, background)
    inst: dict[int, np.ndarray] = {}
    for c in sorted(per_class):
        steps = per_class[c]
        if c not in fg or not steps.shapes:
            continue
        before = mask == c
        after = class_mask_steps(before, steps, scale)
        mask[before & ~after] = bg
        mask[after & ~before & (mask == bg)] = c
        ws = steps.watershed
        if ws is not None and ws.enabled:
            inst[c] = watershed_split(mask == c, ws.marker_threshold, ws.min_marker_area, ws.compactness)
    g = cfg.gating
    if g.active:
        area = int(np.isin(mask, fg).sum()) if background is not None else int((mask != bg).sum())
        max_p = float(p[fg].max()) if fg else 1.0
        if is_gated(g, area, max_p, image_probability, scale):
            mask[:] = bg
            inst = {c: np.zeros(mask.shape, np.int32) for c in inst}
    if instances:
        for c in fg:
            if c not in inst:
                inst[c] = label_objects(mask == c)[0]
        return mask, inst
    return mask, (inst or None)
