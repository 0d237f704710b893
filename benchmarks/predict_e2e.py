"""End to end: ``biomedseg.predict`` with its defaults on a run folder versus MONAI's
``sliding_window_inference`` on the same loaded weights, same tile and overlap; masks compared.

The run: the default ``unet`` of ``biomedseg train`` (MONAI U-Net, width 32, depth 5, residual
units; random weights, seed 0; tile 256, the config's overlap), written with ``write_run`` and
loaded once with ``load_run`` (what ``predict RUN`` does). One random grey ``SIZE x SIZE`` PNG.

- biomedseg: ``predict(loaded, [image], out)``: every option at its default (precision, channels-last,
  compile ``auto``, batch, threads = the cores, overlay written) except ``quiet``; a fresh output
  folder each time. The first call (compiling where ``auto`` compiles) is timed apart as ``first_s``.
- MONAI: the same image read and normalised with the run's normaliser, ``sliding_window_inference``
  (fp32, Gaussian ``sigma_scale=0.125``, ``--monai-batch`` tiles per forward, the run's tile and
  overlap) on ``loaded.model``, softmax, argmax: no file written.

Interleaved A B A B, medians; ``equal=`` is the share of pixels where biomedseg's written mask
equals MONAI's argmax.

``--run RUN`` measures a trained run folder instead (its own tile, overlap and width) and
``--image FILE`` a real image instead of noise: random weights on noise predict a noise mask,
whose PNG, object count and overlay cost more than a real mask's (the realistic line).

    python benchmarks/predict_e2e.py --size 4096 --repeats 2 [--cpu-class avx2]
    python benchmarks/predict_e2e.py --run RUN --image MOSAIC.png --repeats 3 --cpu-class avx2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_class import add_option, apply_cpu_class, class_fields  # noqa: E402


def write_default_run(root: Path, channels: int = 1, **model_kwargs) -> Path:
    """A run folder holding the default ``unet`` (random weights, seed 0) and nothing else set."""
    import torch

    from biomedseg.models import create_model
    from biomedseg.runs import DatasetInfo, write_run

    torch.manual_seed(0)
    state = create_model("unet", channels, 2, **model_kwargs).state_dict()
    info = DatasetInfo(
        classes=["background", "fg"],
        background=0,
        palette={"values": [[0], [1]]},
        strict_index=False,
        channels=channels,
        n_classes=2,
        normalization={"mean": [128.0] * channels, "std": [64.0] * channels},
        split={"train": [], "val": []},
        source="",
    )
    config = {"model": "unet", **({"model_kwargs": model_kwargs} if model_kwargs else {})}
    return write_run(root / "run", config, info, {"model": state}).root


def monai_mask(loaded, image, batch: int):
    """MONAI ``sliding_window_inference`` on ``loaded.model`` (fp32): the argmax mask ``(H, W) uint8``."""
    import torch
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(loaded.normalizer(image))[None].to(loaded.device)
    tile = loaded.tile_size
    with torch.inference_mode():
        logits = sliding_window_inference(
            x, (tile, tile), batch, loaded.model, overlap=loaded.settings.overlap, mode="gaussian", sigma_scale=0.125
        )
        return torch.softmax(logits[0].float(), 0).argmax(0).to(torch.uint8).cpu().numpy()


def compare(
    size: int, repeats: int, device: str = "auto", monai_batch: int = 4, model_kwargs=None, run=None, image_path=None
) -> dict:
    """Times and mask agreement of ``predict`` (defaults) vs MONAI on one ``size``² noise image
    (or ``image_path``), with the default run (or the run folder ``run``)."""
    import numpy as np
    from PIL import Image

    from biomedseg import predict
    from biomedseg.inference.run import load_run
    from biomedseg.io import read_image

    root = Path(tempfile.mkdtemp(prefix="predict_e2e_"))
    loaded = load_run(run or write_default_run(root, **(model_kwargs or {})), device=device)
    path = root / "image.png"
    if image_path is None:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    else:
        path = Path(image_path)
    image = read_image(path)

    def ours(i: int) -> float:
        t = time.perf_counter()
        s = predict(loaded, [path], root / f"out{i}", quiet=True)
        assert not s.failed, s.failed
        return time.perf_counter() - t

    first = ours(0)  # compiles where compile=auto does
    monai_mask(loaded, image[: loaded.tile_size * 2, : loaded.tile_size * 2], monai_batch)  # warm-up
    times: dict[str, list[float]] = {"biomedseg": [], "monai": []}
    for r in range(repeats):
        times["biomedseg"].append(ours(r + 1))
        t = time.perf_counter()
        reference = monai_mask(loaded, image, monai_batch)
        times["monai"].append(time.perf_counter() - t)
        print(
            f"  e2e round {r + 1}: biomedseg {times['biomedseg'][-1]:.2f} s, monai {times['monai'][-1]:.2f} s",
            flush=True,
        )
    written = np.array(Image.open(root / f"out{repeats}" / f"{path.stem}.png"))
    pixels = image.shape[0] * image.shape[1]
    mpix = {k: pixels / 1e6 / statistics.median(v) for k, v in times.items()}
    return {
        "mpix": mpix,
        "first_s": first,
        "equal": float((written == reference).mean()),
        "precision": loaded.precision,
        "channels_last": loaded.channels_last,
        "device": str(loaded.device),
        "tile": loaded.tile_size,
        "overlap": loaded.settings.overlap,
        "size": f"{image.shape[1]}x{image.shape[0]}",
        "source": f"run={Path(run).name if run else 'default'} image={path.name if image_path else 'noise'}",
    }


def result_line(r: dict, monai_batch: int, cpu_class: str | None) -> str:
    import torch

    line = (
        f"RESULT predict_e2e size={r['size']} {r['source']} tile={r['tile']} overlap={r['overlap']} "
        f"device={r['device']} "
        f"threads={torch.get_num_threads()} biomedseg_predict={r['mpix']['biomedseg']:.3f}MPix/s "
        f"({r['precision']}, channels_last={r['channels_last']}, defaults) monai_swi={r['mpix']['monai']:.3f}MPix/s "
        f"(fp32, batch {monai_batch}) ratio={r['mpix']['biomedseg'] / r['mpix']['monai']:.2f} "
        f"first_call_s={r['first_s']:.1f} equal={100 * r['equal']:.4f}%"
    )
    return line + (class_fields(cpu_class) if r["device"] == "cpu" else f" gpu={torch.cuda.get_device_name()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--monai-batch", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--run", help="a trained run folder (default: the default U-Net, random weights)")
    ap.add_argument("--image", help="an image file (default: --size x --size grey noise)")
    add_option(ap)
    args = ap.parse_args(argv)
    apply_cpu_class(args.cpu_class)
    r = compare(args.size, args.repeats, args.device, args.monai_batch, run=args.run, image_path=args.image)
    print(result_line(r, args.monai_batch, args.cpu_class), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
