"""Does post-processing tuned on the validation split help (or at least not hurt) on test?

    python benchmarks/postprocess_effect.py RUN DATA [RUN DATA ...]

For each trained run: ``tune-postprocess`` on its validation split, then ``evaluate --split
test`` with and without the tuned ``postprocess.yaml``. Prints one row per run, then one result
line. (Runs come from e.g. ``benchmarks/time_to_dice.py --workdir W``.)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) % 2:
        print(__doc__)
        return 2
    from biomedseg.workflows.evaluation import evaluate
    from biomedseg.workflows.tune_postprocess import tune_postprocess

    work = Path(tempfile.mkdtemp(prefix="biomedseg_pp_"))
    rows = []
    print("| run | val Dice argmax -> tuned | test Dice plain | test Dice tuned | test image_dice plain -> tuned |")
    print("|---|---|---|---|---|")
    for run, data in zip(args[::2], args[1::2]):
        cfg = tune_postprocess(run, data, split="val", quiet=True)
        plain = evaluate(
            run, data, work / f"{Path(run).name}_plain", split="test", overlays=False, postprocess=False, quiet=True
        )
        tuned = evaluate(
            run, data, work / f"{Path(run).name}_tuned", split="test", overlays=False, postprocess=True, quiet=True
        )
        t = cfg.tuning
        rows.append((Path(run).name, plain["dice"], tuned["dice"]))
        print(
            f"| {Path(run).name} | {t['dice_argmax']:.4f} -> {t['dice_tuned']:.4f} | {plain['dice']:.4f} | "
            f"{tuned['dice']:.4f} | {plain['image_dice']:.4f} -> {tuned['image_dice']:.4f} |",
            flush=True,
        )
    print(
        "RESULT postprocess_effect "
        + "; ".join(f"{n}: test dice {a:.4f} -> {b:.4f} ({b - a:+.4f})" for n, a, b in rows)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
