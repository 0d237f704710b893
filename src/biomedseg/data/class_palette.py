"""Class palette and class names of a data set, shared by the audit and the tiling."""

from __future__ import annotations

from biomedseg.io.masks import Palette


def palette_from_meta(meta: dict) -> Palette | None:
    """The ``palette`` of a ``dataset.json`` dict; ``None`` when it is missing or malformed."""
    if not isinstance(meta.get("palette"), (dict, list)):
        return None
    try:
        return Palette.from_json(meta["palette"])
    except (KeyError, TypeError, ValueError):
        return None


def default_class_names(k: int) -> list[str]:
    """Names of ``k`` unnamed classes: ``background, foreground`` for up to 2 classes, else
    ``background, class_1 .. class_{k-1}``."""
    if k <= 2:
        return ["background", "foreground"]
    return ["background"] + [f"class_{i}" for i in range(1, k)]


def add_foreground_class(palette: Palette) -> Palette:
    """A one-class palette (masks with background only) completed to two classes: grey ``0``
    gets foreground ``1``, any other grey value ``255``, a colour gets white."""
    if palette.channels == 1:
        extra = (1,) if palette.values == [(0,)] else (255,)
        return Palette(list(palette.values) + [extra])
    return Palette(list(palette.values) + [(255, 255, 255)])


def resolve_ignore(configured, meta: dict | None, mask_paths) -> tuple[tuple[int, ...] | None, str | None]:
    """The stored value of unlabelled pixels and why: ``configured`` (the config's ``ignore_value``),
    else ``dataset.json``'s ``ignore_value``, else inferred where unambiguous
    (:func:`~biomedseg.io.masks.infer_ignore_value`: class indices plus 255; never 0/255 binary masks).
    ``"none"`` turns it off (no inference). ``(None, None)``: no unlabelled value."""
    import numpy as np

    from biomedseg.io.masks import infer_ignore_value

    for value, where in (
        (configured, "config ignore_value"),
        ((meta or {}).get("ignore_value"), "dataset.json ignore_value"),
    ):
        if isinstance(value, str) and value.lower() == "none":
            return None, f"none: set by {where}"
        if value is not None:
            return tuple(int(v) for v in np.atleast_1d(value)), f"set by {where}"
    found = infer_ignore_value(mask_paths)
    if found is None:
        return None, None
    return found, (
        "inferred: the masks hold class indices 0..m and 255, which can only mean unlabelled here "
        "(set ignore_value: none in the config or dataset.json if 255 is a class)"
    )
