"""biomedseg: semantic segmentation of 2D biomedical images.

The heavy parts (torch, MONAI) are imported lazily so that ``biomedseg --help`` stays fast.
Every command of the command line is also a plain function here::

    import biomedseg
    run = biomedseg.train("data/", out="runs/a", epochs=20)
    biomedseg.evaluate(run, "data/", out="runs/a/eval")
    biomedseg.predict(run, ["new_images/"], out="pred/")
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "train": ("biomedseg.workflows.training", "train"),
    "evaluate": ("biomedseg.workflows.evaluation", "evaluate"),
    "predict": ("biomedseg.workflows.prediction", "predict"),
    "demo": ("biomedseg.workflows.demo", "run_demo"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'biomedseg' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
