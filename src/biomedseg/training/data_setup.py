"""From a DATA folder to everything training needs: pairs, classes, palette, split, cache.

Writes nothing; :mod:`biomedseg.training.api` records the result in the run folder's
``dataset.json`` so that ``predict`` and ``evaluate`` need nothing but the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from biomedseg.core.errors import UserError
from biomedseg.data.class_palette import resolve_ignore
from biomedseg.data.discovery import check_pairs, find_pairs, resolve_data
from biomedseg.data.splits import make_split
from biomedseg.io import Palette, discover_palette, is_grey_rgb, read_image

log = logging.getLogger("biomedseg")


@dataclass
class DataSetup:
    source: object  # DataSource
    samples: list  # all Samples (after exclusions)
    classes: list[str]
    palette: Palette
    strict_index: bool
    background: int | None
    channels: int
    split: dict[str, list[str]]
    ignore_reason: str | None = None  # why palette.ignore (unlabelled pixels) was taken, when it was


def _palette(values, ignore, classes=None) -> Palette:
    try:
        return Palette(values, ignore=ignore)
    except ValueError:
        named = f" (class {classes[ignore[0]]!r})" if classes and len(ignore) == 1 and ignore[0] < len(classes) else ""
        raise UserError(
            f"config: ignore_value {list(ignore) if len(ignore) > 1 else ignore[0]} is also a class "
            f"value{named}; unlabelled pixels need a value of their own (e.g. 255)"
        ) from None


def _classes_and_palette(cfg, meta: dict | None, mask_paths, ignore=None) -> tuple[list[str], Palette, bool]:
    classes, palette, strict = _classes_and_palette_of(cfg, meta, mask_paths, ignore)
    return classes, (_palette(palette.values, ignore, classes) if ignore is not None else palette), strict


def _classes_and_palette_of(cfg, meta: dict | None, mask_paths, ignore) -> tuple[list[str], Palette, bool]:
    classes = cfg.classes or (meta or {}).get("classes")
    if cfg.palette:
        palette = Palette([tuple(int(v) for v in entry) for entry in cfg.palette])
        classes = classes or [f"class_{i}" for i in range(len(palette.values))]
        if len(classes) != len(palette.values):
            raise UserError(f"config: {len(classes)} classes but a palette of {len(palette.values)} entries")
        return list(classes), palette, False
    if ignore is not None and classes and len(ignore) == 1:
        _palette([(i,) for i in range(len(classes))], ignore, list(classes))  # a class index as ignore: refused
    palette = discover_palette(mask_paths, ignore=ignore)
    k = len(palette.values)
    is_index = all(len(v) == 1 and v[0] == i for i, v in enumerate(palette.values))
    if classes:
        if is_index:
            # index masks with configured classes: values >= K are errors, not damage
            return list(classes), Palette.identity(len(classes)), True
        if len(classes) != k:
            raise UserError(
                f"the masks use {k} values {[v if len(v) > 1 else v[0] for v in palette.values]} "
                f"but {len(classes)} classes are configured ({', '.join(classes)})"
            )
        return list(classes), palette, False
    if k <= 2:
        names = ["background", "foreground"][:k] if k == 2 else ["background"]
    else:
        names = ["background"] + [f"class_{i}" for i in range(1, k)]
    if k < 2:
        names = ["background", "foreground"]
        if is_index:
            palette = Palette.identity(2)
        else:  # a single value seen: it is the background unless it is the 255 of a 0/255 encoding
            only = palette.values[0]
            palette = Palette([(0,) * len(only), only] if any(only) else [only, (255,) * len(only)])
    return names, palette, False


def _background_index(cfg, classes: list[str]) -> int | None:
    bg = cfg.background
    if bg is None or bg == "none":
        return None
    if bg == "auto":
        for i, n in enumerate(classes):
            if n.lower() in ("background", "bg", "back"):
                return i
        return None
    if isinstance(bg, int) or (isinstance(bg, str) and bg.isdigit()):
        return int(bg)
    if bg in classes:
        return classes.index(bg)
    raise UserError(f"config: background {bg!r} is not one of the classes {classes}")


def _channels(cfg, image_paths) -> int:
    if cfg.channels:
        return int(cfg.channels)
    # colour if any sampled image holds real colour; grey-stored-as-RGB counts as grey
    step = max(1, len(image_paths) // 64)
    for p in image_paths[::step]:
        img = read_image(p)
        if img.shape[-1] == 3 and not is_grey_rgb(img):
            return 3
    return 1


def given_split(split: dict, ids: list[str], given: dict, root) -> dict[str, list[str]]:
    """An explicit ``{"train", "val"}`` split (e.g. a cross-validation fold), checked against the
    pairs found; the test split of ``dataset.json`` is kept and must not be trained or validated on."""
    known, test = set(ids), set(given.get("test", []))
    out = {side: [str(i) for i in split.get(side) or []] for side in ("train", "val")}
    for side, members in out.items():
        missing = [i for i in members if i not in known]
        if missing:
            raise UserError(
                f"{root}: the given {side} split names {len(missing)} ids with no image/mask pair "
                f"({', '.join(missing[:5])})"
            )
        leaked = [i for i in members if i in test]
        if leaked:
            raise UserError(
                f"{root}: the given {side} split holds {len(leaked)} ids of the test split ({', '.join(leaked[:5])})"
            )
    out["test"] = sorted(i for i in test if i in known)
    return out


def prepare_data(cfg, data=None, images=None, masks=None, split: dict | None = None) -> DataSetup:
    """Find and check pairs, classes, palette, channels and the train/val(/test) split.

    ``split``: an explicit ``{"train": ids, "val": ids}`` used instead of ``dataset.json``'s split
    or a random one (its test split is kept aside)."""
    source = resolve_data(data, images, masks)
    samples = find_pairs(source.images_dir, source.masks_dir, allow_unlabelled=cfg.allow_unlabelled)
    unlabelled = [s.id for s in samples if s.mask is None]  # not labelled: like an exclusion below
    if unlabelled:  # --allow-unlabelled: images without a mask file are not labelled, so not trained on
        log.info(
            "%d images have no mask file and are left out (--allow-unlabelled): %s",
            len(unlabelled),
            ", ".join(unlabelled[:5]) + (" ..." if len(unlabelled) > 5 else ""),
        )
        samples = [s for s in samples if s.mask is not None]
    check_pairs(samples)
    from biomedseg.data.group_split import read_exclude

    excluded = set(cfg.exclude) | set(read_exclude(source.root)) | set(unlabelled)  # exclude.txt: `biomedseg split`
    samples = [s for s in samples if s.id not in excluded]
    if not samples:
        raise UserError(f"{source.images_dir}: no image/mask pairs left to train on")
    meta = source.meta or {}
    ignore, ignore_reason = resolve_ignore(cfg.ignore_value, meta, [s.mask for s in samples])
    classes, palette, strict = _classes_and_palette(cfg, meta, [s.mask for s in samples], ignore)
    ids = [s.id for s in samples]
    given = meta.get("split") or {}
    if split is not None:
        split = given_split(split, ids, given, source.root)
    elif given.get("train"):
        train_pool = [i for i in given["train"] if i in set(ids)]
        missing = sorted(set(given["train"]) - set(ids) - excluded)
        if missing:
            raise UserError(
                f"{source.root}/dataset.json: split names {len(missing)} ids with no image/mask pair "
                f"({', '.join(missing[:5])})"
            )
        if given.get("val"):  # a given validation split (e.g. duplicate-aware, from `biomedseg split`)
            split = {"train": train_pool, "val": [i for i in given["val"] if i in set(ids)]}
        else:
            split = make_split(train_pool, cfg.val_fraction, cfg.seed)
        split["test"] = sorted(i for i in given.get("test", []) if i in set(ids))
    else:
        split = make_split(ids, cfg.val_fraction, cfg.seed)
    return DataSetup(
        source,
        samples,
        classes,
        palette,
        strict,
        _background_index(cfg, classes),
        _channels(cfg, [s.image for s in samples]),
        split,
        ignore_reason,
    )


def auto_iterations_per_epoch(cfg, train_shapes) -> int:
    """One epoch = about one pass over the training pixels (:func:`steps_per_pass`)."""
    if cfg.iterations_per_epoch:
        return int(cfg.iterations_per_epoch)
    from biomedseg.planning.planner import steps_per_pass

    return steps_per_pass(float(sum(h * w for h, w in train_shapes)), cfg.patch_size, cfg.batch_size)


def _attach_pixel_sizes(cache: dict, by_id: dict, source) -> None:
    """Each cached sample's pixel size (``dataset.json`` first, then the file's metadata)."""
    from biomedseg.io.pixel_size import resolve_pixel_size

    meta = getattr(source, "meta", None)
    for sid, sample in cache.items():
        found = resolve_pixel_size(by_id[sid].image, meta, sid)[0]
        sample.pixel_size = tuple(found) if found is not None else None


@dataclass
class TrainingData:
    """The prepared data folder and its decoded training (and validation) samples."""

    setup: DataSetup
    train: list  # CachedSample of the training split
    val: list  # CachedSample of the validation split (empty when not loaded)

    @property
    def n_classes(self) -> int:
        return len(self.setup.classes)


def load_training_data(
    cfg, data=None, images=None, masks=None, with_val: bool = True, quiet: bool = False, split: dict | None = None
) -> TrainingData:
    """:func:`prepare_data` (``split``: an explicit train/val split), then decode the training (and
    validation) images into memory once."""
    from tqdm.auto import tqdm

    from biomedseg.data.datasets import load_sample

    setup = prepare_data(cfg, data, images, masks, split=split)
    by_id = {s.id: s for s in setup.samples}
    n_classes = len(setup.classes)
    rng = np.random.default_rng(cfg.seed)
    wanted = setup.split["train"] + (setup.split.get("val", []) if with_val else [])
    cache, snapped = {}, 0
    for sid in tqdm(wanted, desc="loading images", disable=True if (quiet or len(wanted) < 20) else None, leave=False):
        cache[sid], n = load_sample(by_id[sid], setup.palette, setup.channels, setup.strict_index, n_classes, rng)
        snapped += n
    _attach_pixel_sizes(cache, by_id, setup.source)
    if snapped:
        log.warning(
            "%d mask pixels were off the palette (anti-aliasing/JPEG damage) and were snapped to the nearest class",
            snapped,
        )
    train = [cache[i] for i in setup.split["train"]]
    if not train:
        raise UserError(f"{setup.source.root}: the training split is empty")
    val = [cache[i] for i in setup.split.get("val", [])] if with_val else []
    return TrainingData(setup, train, val)


def at_working_scale(
    data: TrainingData, scale: float, seed: int = 0, quiet: bool = False, pixel_size=None
) -> TrainingData:
    """``data`` with its training images shrunk by ``scale`` (anti-aliased) and their masks resampled
    so thin and small classes survive (:func:`~biomedseg.transforms.resample.resample_mask`);
    images whose pixel size differs from ``pixel_size`` (the reference ``(y, x)`` µm) are first
    brought to it.

    Validation images stay native: validation runs the network at the working scale and scores at
    the native resolution (:func:`~biomedseg.training.validation.validate_images`)."""
    from biomedseg.io.pixel_size import pixel_size_factor

    factors = [pixel_size_factor(pixel_size, s.pixel_size) or (1.0, 1.0) for s in data.train]
    if scale >= 1 and all(f == (1.0, 1.0) for f in factors):
        return data
    from tqdm.auto import tqdm

    from biomedseg.data.datasets import CachedSample, index_class_pixels
    from biomedseg.transforms.resample import resample_image, resample_mask

    rng = np.random.default_rng(seed)
    k, bg = data.n_classes, data.setup.background
    train = []
    for s, (fy, fx) in tqdm(
        list(zip(data.train, factors)),
        desc=f"resampling to scale {scale:g}",
        leave=False,
        disable=True if (quiet or len(data.train) < 20) else None,
    ):
        shape = (max(1, round(s.shape[0] * scale * fy)), max(1, round(s.shape[1] * scale * fx)))
        mask = resample_mask(s.mask, shape, k, bg)
        train.append(
            CachedSample(s.id, resample_image(s.image, shape), mask, index_class_pixels(mask, k, rng), s.pixel_size)
        )
    return TrainingData(data.setup, train, data.val)
