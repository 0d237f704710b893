"""``biomedseg suggest``: which unlabelled images to label next.

1. **Known images out.** The pool (files, folders, globs, ``.zarr``) is fingerprinted like the
   audit does (:func:`~biomedseg.audit.image_measurements.measure_image`: exact digest and
   contrast-stretched thumbnail) together with the run's training images (``dataset.json``
   ``source``) and every ``--exclude`` DATA folder; the audit's near-duplicate search
   (:func:`~biomedseg.audit.duplicates.find_pairs`) then drops pool images that are copies or
   near duplicates of labelled ones, and keeps one image of each group of near duplicates inside
   the pool. Unreadable images are reported and skipped.
2. **Uncertainty.** Each remaining image is predicted once
   (:func:`~biomedseg.trust.features.predict_with_features`: the probabilities of
   ``predict`` and the pooled bottleneck features of the same pass); its uncertainty is
   :data:`~biomedseg.metrics.uncertainty.DEFAULT_SCORE` of the probabilities. For an ensemble or
   CV folder the members' disagreement (mean mutual information) is reported too.
3. **Diversity.** A greedy core-set weighted by uncertainty: the most uncertain image first, then
   each time the image maximising ``uncertainty x distance to the nearest image already picked``
   in the standardised feature space (thumbnail descriptors for networks without a known
   bottleneck), so twenty near-copies of one hard image are not all suggested.
4. ``OUT`` (CSV, ranked) and ``OUT``'s ``.html`` contact sheet (thumbnail, predicted classes,
   uncertainty map, why each image was picked).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedseg.core.errors import UserError

log = logging.getLogger("biomedseg")

#: Images suggested by default.
DEFAULT_N = 20
#: Longest side of the pictures of the contact sheet.
SHEET_SIDE = 192


@dataclass
class SuggestOptions:
    """What ``suggest`` is asked for (see the CLI's help for each)."""

    n: int = DEFAULT_N
    out: Path = Path("suggest.csv")
    exclude: list[Path] = field(default_factory=list)
    device: str = "auto"
    checkpoint: str = "best"
    tta: bool = False


def _data_images(folder) -> list[Path]:
    """Every image of a DATA folder (labelled or not)."""
    from biomedseg.data.discovery import find_pairs, resolve_folders

    _, images_dir, masks_dir = resolve_folders(folder)
    return [s.image for s in find_pairs(images_dir, masks_dir)]


def _training_sources(loaded) -> list[str | None]:
    """The training data folder of the run, or of every member of a CV or ensemble folder."""
    from biomedseg.runs.ensemble import ensemble_members

    if loaded.run.info().kind == "run":
        return [loaded.info.source]
    return list(dict.fromkeys(leaf.dataset().source for leaf, _ in ensemble_members(loaded.run)))


def labelled_images(loaded, exclude) -> list[Path]:
    """The training images of the run (of each member; when the folder still exists) and those of
    the ``exclude`` DATA folders."""
    found: list[Path] = []
    for source in _training_sources(loaded):
        if source and Path(source).is_dir():
            found += _data_images(source)
        else:
            log.warning(
                "%s: the training data folder %r is gone; only --exclude images are skipped", loaded.run_dir, source
            )
    for folder in exclude:
        found += _data_images(folder)
    return list(dict.fromkeys(found))


def _fingerprints(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str | None], list[bool]]:
    """Thumbnails, valid (not constant), digests and readable flags; unreadable images are logged."""
    from biomedseg.audit.image_measurements import THUMB, measure_image

    rng = np.random.default_rng(0)
    thumbs = np.zeros((len(paths), THUMB, THUMB), np.uint8)
    valid, digests, readable = np.zeros(len(paths), bool), [], []
    for i, path in enumerate(paths):
        try:
            record, thumbs[i] = measure_image(path, rng)
        except UserError as exc:
            log.warning("skipped: %s", exc)
            digests.append(None)
            readable.append(False)
            continue
        valid[i] = not record.constant
        digests.append(record.digest)
        readable.append(True)
    return thumbs, valid, digests, readable


def drop_known(pool: list[Path], labelled: list[Path]) -> tuple[list[int], dict[str, str], np.ndarray]:
    """Pool indices to score, ``{pool file: why skipped}`` and the pool's thumbnails.

    Skipped: unreadable images, copies and near duplicates of labelled images, and all but the
    first of each group of near duplicates inside the pool."""
    from biomedseg.audit.duplicates import find_pairs
    from biomedseg.data.group_split import connected_groups

    labelled_set = {p.resolve() for p in labelled}
    paths = list(pool) + list(labelled)
    thumbs, valid, digests, readable = _fingerprints(paths)
    pairs, _ = find_pairs(thumbs, valid, digests)
    skipped: dict[str, str] = {}
    n = len(pool)
    for i, p in enumerate(pool):
        if not readable[i]:
            skipped[str(p)] = "unreadable"
        elif p.resolve() in labelled_set:
            skipped[str(p)] = "in the training data"
    for group in connected_groups(len(paths), [(q.i, q.j) for q in pairs]):
        known = [g for g in group if g >= n]
        members = [g for g in group if g < n and str(pool[g]) not in skipped]
        if known:
            for g in members:
                skipped[str(pool[g])] = f"same picture as labelled image {paths[known[0]]}"
        else:
            for g in members[1:]:
                skipped[str(pool[g])] = f"same picture as {pool[members[0]]} (kept)"
    return [i for i in range(n) if str(pool[i]) not in skipped], skipped, thumbs[:n]


def _shrink(picture: np.ndarray, side: int = SHEET_SIDE) -> np.ndarray:
    from PIL import Image

    h, w = picture.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1.0:
        return picture
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.NEAREST))


def _pictures(loaded, image: np.ndarray, proba: np.ndarray) -> dict:
    from biomedseg.core.render import class_overlay, to_display_rgb
    from biomedseg.metrics.uncertainty import entropy_map
    from biomedseg.reports.suggest_sheet import uncertainty_colours

    mask = proba.argmax(0).astype(np.uint8)
    return {
        "thumbnail": _shrink(to_display_rgb(image)),
        "overlay": _shrink(class_overlay(image, mask, background=loaded.background)),
        "uncertainty": _shrink(uncertainty_colours(entropy_map(proba))),
    }


def score_image(loaded, predictor, path: Path) -> tuple[dict, np.ndarray | None, dict]:
    """One pool image -> (its scores, pooled features or ``None``, contact-sheet pictures)."""
    from biomedseg.io import read_image
    from biomedseg.io.pixel_size import pixel_size
    from biomedseg.metrics.uncertainty import DEFAULT_SCORE, image_scores, mutual_information_map
    from biomedseg.trust.features import member_samples, predict_with_features

    image = read_image(path)
    try:
        size = pixel_size(path)
    except (UserError, OSError, ValueError):
        size = None
    proba, features = predict_with_features(loaded, predictor, image, size)
    scores = {"uncertainty": 0.0, **image_scores(proba, loaded.background)}
    scores["uncertainty"] = scores[DEFAULT_SCORE]
    samples = member_samples(loaded, predictor, image) if size is None else None
    scores["member_disagreement"] = float(mutual_information_map(samples).mean()) if samples is not None else None
    fg = proba.argmax(0) != (loaded.background if loaded.background is not None else -1)
    scores["foreground_fraction"] = float(fg.mean())
    return scores, features, _pictures(loaded, image, proba)


def _standardise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)


def greedy_core_set(uncertainty, features, n: int) -> list[tuple[int, float, int | None]]:
    """``n`` picks ``(index, distance to the nearest earlier pick, that pick's index)``: the most
    uncertain first, then each time the largest ``uncertainty x distance`` (see module)."""
    u = np.asarray(uncertainty, dtype=np.float64)
    u = u + 1e-3 * max(float(u.max()), 1e-9)  # an image the model is sure about still counts for its novelty
    x = _standardise(features)
    first = int(np.argmax(u))
    picks = [(first, float("inf"), None)]
    dist = np.linalg.norm(x - x[first], axis=1)
    nearest = np.full(len(u), first)
    taken = np.zeros(len(u), bool)
    taken[first] = True
    while len(picks) < min(n, len(u)):
        gain = np.where(taken, -1.0, u * dist)
        i = int(np.argmax(gain))
        picks.append((i, float(dist[i]), int(nearest[i])))
        taken[i] = True
        closer = np.linalg.norm(x - x[i], axis=1) < dist
        dist = np.where(closer, np.linalg.norm(x - x[i], axis=1), dist)
        nearest = np.where(closer, i, nearest)
    return picks


def _why(row: dict, n_scored: int, order: dict, nearest: str | None, distance: float) -> str:
    head = f"uncertainty {row['uncertainty']:.3g} ({order[row['file']]} of {n_scored} in the pool)"
    if nearest is None:
        return f"most uncertain image: {head}"
    return f"{head}; unlike the images picked before it (distance {distance:.3g} to the nearest, {nearest})"


def _feature_matrix(features: list, thumbs: np.ndarray) -> tuple[np.ndarray, str]:
    from biomedseg.audit.duplicates import descriptors

    if features and all(f is not None for f in features):
        return np.stack(features), "network features"
    return descriptors(thumbs), "thumbnail descriptors"


#: Columns of the CSV, in order.
CSV_COLUMNS = [
    "rank",
    "file",
    "uncertainty",
    "mean_entropy",
    "boundary_entropy",
    "expected_dice_loss",
    "member_disagreement",
    "foreground_fraction",
    "distance_to_nearest_pick",
    "nearest_pick",
    "why",
]
#: Score columns shown on the contact sheet.
SHEET_COLUMNS = ["uncertainty", "boundary_entropy", "mean_entropy", "member_disagreement", "foreground_fraction"]


def write_suggest_csv(path: Path, rows: list[dict]) -> None:
    """The ranked rows as CSV (atomic); ``None`` cells empty."""
    from biomedseg.io.writers import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})


def _score_pool(loaded, files: list[Path], keep: list[int], tta: bool) -> tuple[list[int], list, list, list]:
    """Score the kept pool images; unreadable ones are logged and left out."""
    predictor = loaded.predictor(tta=tta)
    scored, rows, feats, pictures = [], [], [], []
    for i in keep:
        try:
            scores, f, pics = score_image(loaded, predictor, files[i])
        except UserError as exc:
            log.warning("skipped: %s", exc)
            continue
        scored.append(i)
        rows.append({"file": str(files[i]), **scores})
        feats.append(f)
        pictures.append(pics)
    return scored, rows, feats, pictures


def _rank(rows: list[dict], matrix: np.ndarray, n: int) -> list[tuple[dict, int]]:
    """Rows in suggestion order with ``rank``, distances and ``why`` filled in."""
    u = np.array([r["uncertainty"] for r in rows])
    order = {rows[i]["file"]: k + 1 for k, i in enumerate(np.argsort(-u, kind="stable"))}
    ranked = []
    for rank, (i, distance, near) in enumerate(greedy_core_set(u, matrix, n), start=1):
        row = dict(
            rows[i],
            rank=rank,
            distance_to_nearest_pick=None if near is None else distance,
            nearest_pick=None if near is None else rows[near]["file"],
        )
        row["why"] = _why(row, len(rows), order, row["nearest_pick"], distance)
        ranked.append((row, i))
    return ranked


def suggest(run_dir, pool, options: SuggestOptions | None = None) -> dict:
    """Rank the unlabelled ``pool`` images (files, folders, globs) for labelling (see module).

    Returns ``{"rows": ranked rows (the CSV's columns), "csv": path, "html": path, "skipped":
    {file: reason}, "features": "network features" | "thumbnail descriptors"}``. ``UserError``:
    ``n < 1``, no pool images, nothing left after the known images are taken out, or none readable.
    """
    from biomedseg.inference.predict.outputs import collect_inputs
    from biomedseg.inference.run import load_run
    from biomedseg.reports.suggest_sheet import write_suggest_sheet

    opts = options or SuggestOptions()
    if opts.n < 1:
        raise UserError(f"--n {opts.n}: must be >= 1")
    files = collect_inputs(pool)
    loaded = load_run(run_dir, opts.checkpoint, opts.device)
    keep, skipped, thumbs = drop_known(files, labelled_images(loaded, opts.exclude))
    if not keep:
        raise UserError(
            f"{', '.join(map(str, pool))}: nothing to suggest: every image is unreadable, in the "
            "training data or a near duplicate of it"
        )
    for name, reason in skipped.items():
        log.debug("not suggested: %s: %s", name, reason)
    scored, rows, feats, pictures = _score_pool(loaded, files, keep, opts.tta)
    if not rows:
        raise UserError(f"{', '.join(map(str, pool))}: no pool image could be read")
    if opts.n > len(rows):
        log.warning("--n %d: only %d pool image(s) can be suggested; the list is shorter", opts.n, len(rows))
    matrix, kind = _feature_matrix(feats, thumbs[scored])
    ranked = _rank(rows, matrix, opts.n)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_suggest_csv(out, [r for r, _ in ranked])
    html = write_suggest_sheet(
        out.with_suffix(".html"),
        [r for r, _ in ranked],
        [pictures[i] for _, i in ranked],
        f"biomedseg suggest: {len(ranked)} of {len(files)} images",
        SHEET_COLUMNS,
    )
    return {"rows": [r for r, _ in ranked], "csv": out, "html": html, "skipped": skipped, "features": kind}
