"""Audit speed and near-duplicate accuracy on a large synthetic data set.

    python benchmarks/audit_scale.py                  # 6000 images of 580x420 (the target)
    python benchmarks/audit_scale.py --n 300          # smoke run

Synthesises N grey 580x420 PNG images (each a distinct random multi-scale texture with random
ellipses; masks are the ellipses, about a third empty) of which a known set are planted near
duplicates of another image: Gaussian noise, a JPEG round trip, a shift of 2-10 px (same size,
cut from a larger canvas) or, with ``--flips``, a mirrored copy; half of the copies get an
altered mask (emptied, moved or replaced). Then runs ``audit_with_report`` (the audit, its
pictures and page) and prints one result line: wall time, images/s, and pair-level
recall/precision of the duplicate groups (targets: under 3 minutes for 6000 images on 2 cores,
recall and precision >= 0.95), plus how many planted mask conflicts were flagged.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

W, H = 580, 420
PAD = 12


def _field(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Multi-scale random texture, float32 0..1, on a (h, w) canvas."""
    out = np.zeros((h, w), np.float32)
    for cells, weight in ((6, 0.5), (24, 0.3), (90, 0.2)):
        gw, gh = cells, max(2, int(cells * h / w))
        small = rng.random((gh, gw)).astype(np.float32)
        out += weight * np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return out


def _ellipses(rng: np.random.Generator, w: int, h: int, n: int) -> list[tuple]:
    boxes = []
    for _ in range(n):
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        rx, ry = rng.uniform(10, 45), rng.uniform(10, 45)
        boxes.append((cx - rx, cy - ry, cx + rx, cy + ry))
    return boxes


def make_base(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One distinct picture on the padded canvas: ``(image uint8, mask uint8 0/1)``."""
    cw, ch = W + 2 * PAD, H + 2 * PAD
    img = _field(rng, cw, ch)
    pil = Image.fromarray(np.clip(img * 200 + 20, 0, 255).astype(np.uint8))
    mask = Image.new("L", (cw, ch), 0)
    d_img, d_mask = ImageDraw.Draw(pil), ImageDraw.Draw(mask)
    n_obj = 0 if rng.random() < 0.35 else int(rng.integers(1, 4))
    for box in _ellipses(rng, cw, ch, n_obj):
        shade = int(rng.integers(0, 256))
        d_img.ellipse(box, fill=shade)
        d_mask.ellipse(box, fill=1)
    return np.asarray(pil), np.asarray(mask)


def _crop(arr: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
    return np.ascontiguousarray(arr[PAD + dy : PAD + dy + H, PAD + dx : PAD + dx + W])


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("L"))


def _alter(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(0, 3)
    if kind == 0 or not mask.any():
        out = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
        if kind != 0 or not mask.any():
            ImageDraw.Draw(out).ellipse(_ellipses(rng, mask.shape[1], mask.shape[0], 1)[0], fill=1)
        return np.asarray(out)
    if kind == 1:
        return np.zeros_like(mask)
    return np.roll(mask, (int(rng.integers(25, 60)), int(rng.integers(25, 60))), axis=(0, 1))


def synthesise(out: Path, n: int, dup_fraction: float, flips: bool, seed: int = 0) -> dict:
    """Write ``out/images``, ``out/masks``; return the planted groups and conflicts."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    n_copies = int(round(n * dup_fraction))
    n_base = n - n_copies
    sources = rng.choice(n_base, size=n_copies, replace=True)
    plan: dict[int, list[int]] = {}
    for k, s in enumerate(sources):
        plan.setdefault(int(s), []).append(n_base + k)
    groups, conflicts = [], []
    save = {"compress_level": 1}

    def write(idx: int, img: np.ndarray, mask: np.ndarray) -> str:
        name = f"img{idx:05d}"
        Image.fromarray(img).save(out / "images" / f"{name}.png", **save)
        Image.fromarray(mask).save(out / "masks" / f"{name}.png", **save)
        return name

    kinds = ["noise", "jpeg", "shift"] + (["flip"] if flips else [])
    for b in range(n_base):
        img, mask = make_base(rng)
        base_id = write(b, _crop(img), _crop(mask))
        if b not in plan:
            continue
        members = [base_id]
        for c in plan[b]:
            kind = kinds[int(rng.integers(0, len(kinds)))]
            if kind == "shift":
                dy, dx = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(2, 11, size=2))
                v_img, v_mask = _crop(img, dy, dx), _crop(mask, dy, dx)
            else:
                v_img, v_mask = _crop(img), _crop(mask)
                if kind == "noise":
                    v_img = np.clip(v_img + rng.normal(0, rng.uniform(3, 8), v_img.shape), 0, 255).astype(np.uint8)
                elif kind == "jpeg":
                    v_img = _jpeg(v_img, int(rng.integers(30, 80)))
                else:
                    v_img, v_mask = v_img[:, ::-1], v_mask[:, ::-1]
            altered = rng.random() < 0.5
            if altered:
                new = _alter(v_mask, rng)
                if new.any() != v_mask.any() or (2.0 * (new & v_mask).sum() / max(new.sum() + v_mask.sum(), 1)) < 0.9:
                    v_mask = new
                else:
                    altered = False
            cid = write(c, np.ascontiguousarray(v_img), np.ascontiguousarray(v_mask))
            members.append(cid)
            if altered:
                conflicts.append((base_id, cid))
        groups.append(members)
    return {"groups": groups, "conflicts": conflicts, "n": n}


def _pairs(groups) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in combinations(g, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6000, help="number of images (default 6000)")
    ap.add_argument("--dup-fraction", type=float, default=0.05, help="share of images that are copies")
    ap.add_argument("--flips", action="store_true", help="plant mirrored copies and audit with --check-flips")
    ap.add_argument("--workdir", default=None, help="keep the data and report here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="biomedseg_audit_"))
    data = work / "data"
    try:
        t0 = time.perf_counter()
        truth = synthesise(data, args.n, args.dup_fraction, args.flips, args.seed)
        gen_s = time.perf_counter() - t0
        from biomedseg.reports.audit.page import audit_with_report

        t0 = time.perf_counter()
        audit = audit_with_report(data, out=work / "audit", check_flips=args.flips, progress=False)
        wall = time.perf_counter() - t0
        found = [g["members"] for g in audit["duplicates"]["groups"]]
        true_pairs, found_pairs = _pairs(truth["groups"]), _pairs(found)
        tp = len(true_pairs & found_pairs)
        recall = tp / max(len(true_pairs), 1)
        precision = tp / max(len(found_pairs), 1)
        altered = {c for _, c in truth["conflicts"]}
        flagged = set(audit["duplicates"]["conflict_ids"])
        conflict_recall = len(altered & flagged) / max(len(altered), 1)
        false_conflicts = sum(
            1 for g in audit["duplicates"]["groups"] if g["conflict"] and not altered & set(g["members"])
        )
        result = {
            "benchmark": "audit_scale",
            "n_images": args.n,
            "size": f"{W}x{H}",
            "cores": os.cpu_count(),
            "wall_s": round(wall, 1),
            "images_per_s": round(args.n / wall, 1),
            "generate_s": round(gen_s, 1),
            "true_groups": len(truth["groups"]),
            "found_groups": len(found),
            "pair_recall": round(recall, 4),
            "pair_precision": round(precision, 4),
            "planted_conflicts": len(altered),
            "conflict_recall": round(conflict_recall, 4),
            "false_conflict_groups": false_conflicts,
            "timing": audit["timing"],
            "target_met": bool(wall < 180 * args.n / 6000 and recall >= 0.95 and precision >= 0.95),
        }
        print(json.dumps(result))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
