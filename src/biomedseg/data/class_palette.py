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
