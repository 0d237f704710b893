"""Augmentation planned from the data: the flips and rotations that leave its statistics alone,
intensity ranges from its own variation between images, colour jitter for RGB.

- :func:`augment_fingerprint` ``(samples, channels) -> {"orientation": ..., "intensity_variation": ...}``
  measures the training images (:func:`biomedseg.planning.orientation.orientation_evidence`,
  :func:`biomedseg.planning.intensity_variation.intensity_variation`); plain JSON-able data.
- :func:`plan_augment` ``(fp) -> {"value": [config list], "reason": "..."}`` turns it into an
  ``augment`` config list (see :mod:`biomedseg.transforms.augment`): the default preset
  (:data:`~biomedseg.transforms.augment.DEFAULT_AUGMENT`) with its flips/rotations replaced by
  the measured ones and its brightness/contrast ranges by the measured ones, plus
  ``channel_jitter`` for RGB data.
"""

from __future__ import annotations

import copy

from biomedseg.planning.intensity_variation import intensity_variation
from biomedseg.planning.orientation import TRANSFORMS, orientation_evidence
from biomedseg.transforms.augment import DEFAULT_AUGMENT

__all__ = ["CHANNEL_JITTER_P", "FLIP_P", "augment_fingerprint", "plan_augment"]

#: probability of each allowed flip when not all eight flips/rotations are allowed
FLIP_P = 0.5
#: probability of the per-channel (colour) jitter on RGB data
CHANNEL_JITTER_P = 0.3


def augment_fingerprint(samples, channels: int) -> dict:
    """Orientation evidence and intensity variation of ``samples`` (objects with ``.image``
    ``(H, W, C)``), seen with ``channels`` input channels."""
    images = [s.image for s in samples]
    return {"orientation": orientation_evidence(images), "intensity_variation": intensity_variation(images, channels)}


def _flips(orientation: dict | None) -> tuple[list[dict], str]:
    """Flip/rotation entries and the words for them."""
    if not orientation:
        return [{"name": "flip_rot90"}], "no orientation measured: all 8 flips/90-degree rotations"
    inv = {name: bool(orientation[name]["invariant"]) for name in TRANSFORMS}
    ratios = ", ".join(f"{TRANSFORMS[n]} {orientation[n]['ratio']:.1f}x" for n in TRANSFORMS)
    if all(inv.values()):
        return [{"name": "flip_rot90"}], (
            f"no preferred orientation ({ratios} the noise floor, "
            f"{orientation['n_images']} images): all 8 flips/90-degree rotations"
        )
    unit = {"mean_image": "mean image by {:.2f} std", "gradients": "gradient maps by {:.2f} x their mean"}
    changed = [orientation[n] | {"name": TRANSFORMS[n]} for n in TRANSFORMS if not inv[n]]
    evidence = ", ".join(
        f"{e['name']} changes the {unit[e['statistic']].format(e['score'])} ({e['ratio']:.1f}x the noise floor)"
        for e in changed
    )
    kept = ", ".join(f"{TRANSFORMS[n]} {orientation[n]['ratio']:.1f}x" for n in TRANSFORMS if inv[n])
    evidence += (f"; {kept} only" if kept else "") + f" ({orientation['n_images']} images)"
    lr, ud = inv["lr_flip"], inv["ud_flip"]
    allowed = {
        (True, True): "left-right and up-down flips, no 90-degree rotations",
        (True, False): "left-right flips only, no up-down flips or rotations",
        (False, True): "up-down flips only, no left-right flips or rotations",
        (False, False): "no flips or rotations",
    }[(lr, ud)]
    entries = [{"name": "flip", "p": FLIP_P, "horizontal": lr, "vertical": ud}] if lr or ud else []
    return entries, f"{evidence}: {allowed}"


def _intensity(entries: list[dict], variation: dict | None) -> str:
    """Set the brightness/contrast ranges in ``entries`` (in place), add colour jitter; the words."""
    if not variation:
        return "intensity ranges of the default preset (no variation measured)"
    ranges = variation["ranges"]
    by_name = {e["name"]: e for e in entries}
    by_name["brightness"]["delta"] = ranges["brightness"]
    by_name["contrast"]["factor"] = list(ranges["contrast"])
    lo, hi = ranges["contrast"]
    words = (
        f"brightness +-{ranges['brightness']:.2f} and contrast {lo:.2f}-{hi:.2f} from the images' spread "
        f"(mean {variation['brightness_spread']:.2f}, log std {variation['contrast_spread']:.2f} pooled std, "
        f"{variation['n_images']} images)"
    )
    if "channel_shift" in ranges:
        at = entries.index(by_name["contrast"]) + 1
        entries.insert(
            at,
            {
                "name": "channel_jitter",
                "p": CHANNEL_JITTER_P,
                "scale": list(ranges["channel_scale"]),
                "shift": ranges["channel_shift"],
            },
        )
        s_lo, s_hi = ranges["channel_scale"]
        words += (
            f"; colour: per-channel offset +-{ranges['channel_shift']:.2f} and factor {s_lo:.2f}-{s_hi:.2f} "
            f"(channel spread {variation['colour_shift_spread']:.2f} / {variation['colour_scale_spread']:.2f})"
        )
    return words


def plan_augment(fp: dict) -> dict:
    """``{"value": [augment config list], "reason": "..."}`` from :func:`augment_fingerprint`'s
    ``fp`` (a missing part keeps the default preset's choice for it)."""
    flips, flip_words = _flips(fp.get("orientation"))
    rest = [copy.deepcopy(e) for e in DEFAULT_AUGMENT if e["name"] != "flip_rot90"]
    intensity_words = _intensity(rest, fp.get("intensity_variation"))
    return {
        "value": flips + rest,
        "reason": f"{flip_words}; {intensity_words}; rotation, scaling, gamma, noise and blur as in the default preset",
    }
