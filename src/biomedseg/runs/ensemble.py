"""Ensemble folders (``biomedseg ensemble``) and the members of any folder that predicts.

::

    ENS/run.json        kind "ensemble"; members: [{"path", "weight"}] (paths relative to ENS when
                        possible), copied: whether the members live in ENS/members/
    ENS/config.yaml     the first member's config, with the tile size the ensemble predicts with
    ENS/dataset.json    the members' classes, palette and channels; identity normalisation (each
                        member normalises its own input); the split the members agree on
    ENS/members/<name>/ copied members (``--copy``): the files a run needs to predict
    ENS/postprocess.yaml  tuned for the ensemble (``tune-postprocess ENS``)

:func:`ensemble_members` resolves any folder to its leaf runs with weights summing to 1: a run
is itself, a CV folder the equal-weight ensemble of its folds, an ensemble its members (which
may be CV folders or ensembles: their weights multiply). Members must agree on classes,
background and input channels (:func:`check_members`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from biomedseg.core.errors import UserError
from biomedseg.runs.cv import DONE, TRAINED, CVFolder
from biomedseg.runs.folder import RunFolder, open_run
from biomedseg.runs.layout import CHECKPOINT_NAMES
from biomedseg.runs.records import DatasetInfo, RunInfo

MEMBERS_DIR = "members"
#: files of a run copied into ``ENS/members/<name>/`` besides its best checkpoint
_COPIED = ("run_json", "config", "plan", "dataset", "metrics", "curves")


def ensemble_members(folder: RunFolder, _seen: tuple = ()) -> list[tuple[RunFolder, float]]:
    """The leaf runs of ``folder`` with their weights (summing to 1), checked to agree."""
    root = folder.root.resolve()
    if root in _seen:
        raise UserError(f"{folder.root}: an ensemble that contains itself")
    kind = folder.info().kind
    if kind == "run":
        return [(folder, 1.0)]
    if kind == "cv":
        cv = CVFolder(folder.root)
        k = cv.n_folds()
        missing = [i for i in range(k) if cv.fold_state(i) not in (TRAINED, DONE)]
        if missing:
            raise UserError(
                f"{folder.root}: folds {', '.join(map(str, missing))} of {k} are not trained yet; "
                "run `biomedseg cv` again to finish them"
            )
        parts = [(cv.fold(i), 1.0) for i in range(k)]
    else:
        parts = [(open_run(folder.root / m["path"]), float(m.get("weight", 1.0))) for m in member_entries(folder)]
    total = sum(w for _, w in parts)
    leaves = [(leaf, w * lw / total) for f, w in parts for leaf, lw in ensemble_members(f, _seen + (root,))]
    check_members([leaf for leaf, _ in leaves])
    return leaves


def member_entries(folder: RunFolder) -> list[dict]:
    """``run.json`` ``members`` of an ensemble folder, checked."""
    members = getattr(folder.info(), "members", None)
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) and "path" in m for m in members):
        raise UserError(f"{folder.paths.run_json}: an ensemble without a valid members list")
    return members


def check_members(runs: list[RunFolder]) -> None:
    """A one-line :class:`UserError` unless every run has the first one's classes, background and
    input channels (an ensemble averages probabilities of the same classes from the same input)."""
    first = runs[0].dataset()
    for run in runs[1:]:
        info = run.dataset()
        for what, a, b in (
            ("classes", info.classes, first.classes),
            ("background", info.background, first.background),
            ("input channels", info.channels, first.channels),
        ):
            if a != b:
                raise UserError(
                    f"{run.root}: {what} {a} differ from {runs[0].root}'s {b}; ensemble members must "
                    "agree on classes and input channels"
                )


def parse_weights(text: str | None, n: int) -> list[float]:
    """``"1,1,2"`` -> ``[1.0, 1.0, 2.0]`` for ``n`` members (``None``: equal weights)."""
    if text is None or str(text).strip() == "":
        return [1.0] * n
    try:
        weights = [float(w) for w in str(text).split(",")]
    except ValueError:
        raise UserError(f"--weights {text}: expected numbers separated by commas, e.g. 1,1,2") from None
    if len(weights) != n:
        raise UserError(f"--weights {text}: {len(weights)} weights for {n} members")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"--weights {text}: weights must be >= 0 and not all 0")
    return weights


# --------------------------------------------------------------------------- config and dataset info
def ensemble_config(leaves: list[RunFolder]) -> dict:
    """The first member's config with the largest member tile (``patch_size``) and smallest batch."""
    values = dict(leaves[0].config_values())
    configs = [leaf.config_values() for leaf in leaves]
    values["patch_size"] = max(int(c.get("patch_size", values.get("patch_size", 0))) for c in configs)
    values["batch_size"] = min(int(c.get("batch_size", values.get("batch_size", 1))) for c in configs)
    return values


def ensemble_dataset_info(leaves: list[RunFolder]) -> DatasetInfo:
    """The members' classes, palette and channels; identity normalisation (each member
    normalises its own input); the split entries all members agree on."""
    infos = [leaf.dataset() for leaf in leaves]
    first = infos[0]
    split = {side: ids for side, ids in first.split.items() if all(i.split.get(side) == ids for i in infos[1:])}
    return first.model_copy(
        update={
            "normalization": {"mean": [0.0] * first.channels, "std": [1.0] * first.channels},
            "split": split,
            "class_pixel_counts": None,
            "class_weights": None,
        }
    )


def write_ensemble_records(folder: RunFolder, leaves: list[RunFolder]) -> None:
    """``config.yaml`` and ``dataset.json`` of an ensemble (or CV) folder from its leaf runs."""
    folder.write_config(yaml.safe_dump(ensemble_config(leaves), sort_keys=False))
    folder.write_dataset(ensemble_dataset_info(leaves))


# --------------------------------------------------------------------------- writing an ensemble
def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # another drive (Windows)
        return str(path.resolve())


def folder_names(runs: list[RunFolder]) -> list[str]:
    """Short unique names: the folder name, with its parent's name (then a number) when two clash."""
    names = [r.root.resolve().name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.root.resolve().parent.name}-{r.root.resolve().name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n}-{i + 1}" for i, n in enumerate(names)]
    return names


def copy_member(run: RunFolder, dst: Path) -> RunFolder:
    """Copy what predicting needs of ``run`` into ``dst``: its records and best checkpoint (as ``best``)."""
    out = RunFolder(dst)
    out.paths.checkpoints.mkdir(parents=True, exist_ok=True)
    for name in _COPIED:
        src = getattr(run.paths, name)
        if src.is_file():
            shutil.copy2(src, getattr(out.paths, name))
    shutil.copy2(run.checkpoint_path("best"), out.paths.checkpoint(CHECKPOINT_NAMES[0]))
    return out


def write_ensemble(out, members: list, weights: list[float] | None = None, copy: bool = False) -> RunFolder:
    """Write the ensemble folder ``out`` of ``members`` (runs, CV folders or ensembles) holding at
    least 2 runs in all: one CV folder is accepted (the ensemble of its folds, e.g. to ``copy`` them).

    ``weights``: one per member (default equal). ``copy``: copy the leaf runs into
    ``out/members/`` (with their effective weights) instead of referencing the folders.
    """
    if not members:
        raise UserError("ensemble: no members given")
    folders = [open_run(m) for m in members]
    weights = list(weights) if weights is not None else [1.0] * len(folders)
    if len(weights) != len(folders):
        raise UserError(f"--weights: {len(weights)} weights for {len(folders)} members")
    total = sum(weights)
    leaves = [(leaf, w * lw / total) for f, w in zip(folders, weights) for leaf, lw in ensemble_members(f)]
    if len(leaves) < 2:
        raise UserError(
            f"{folders[0].root}: one run is no ensemble; give at least 2 runs, or one CV or ensemble "
            "folder (a CV folder already is the ensemble of its folds)"
        )
    check_members([leaf for leaf, _ in leaves])
    ens = RunFolder(out)
    if ens.root.exists() and any(ens.root.iterdir()):
        raise UserError(f"{ens.root}: exists and is not empty; choose another --out")
    ens.root.mkdir(parents=True, exist_ok=True)
    if copy:
        names = folder_names([leaf for leaf, _ in leaves])
        entries = [{"path": f"{MEMBERS_DIR}/{name}", "weight": w} for name, (_, w) in zip(names, leaves)]
        for name, (leaf, _) in zip(names, leaves):
            copy_member(leaf, ens.root / MEMBERS_DIR / name)
    else:
        entries = [{"path": _relative(f.root, ens.root), "weight": w} for f, w in zip(folders, weights)]
    ens.write_info(RunInfo(**RunInfo.new("ensemble").model_dump(), members=entries, copied=copy))
    write_ensemble_records(ens, [leaf for leaf, _ in leaves])
    return ens
