"""The options of one ``predict`` call, in one object (and each default defined here once).

``biomedseg.predict(run, inputs, out, **keywords)`` builds a :class:`PredictOptions` from its
keywords (:meth:`PredictOptions.of`); the batch loop, the per-file steps and the Dask tasks pass
the object on instead of twenty keyword arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from biomedseg.engine.defaults import DEFAULT_COMPILE


@dataclass(frozen=True)
class PredictOptions:
    """What to predict and write; see :func:`biomedseg.inference.predict.batch.predict` for each."""

    tta: bool | str = False
    overlays: bool = True
    probabilities: bool = False
    #: also write ``<stem>_uncertainty.tif`` (float16 per-pixel uncertainty; :mod:`biomedseg.trust.predictions`)
    uncertainty: bool = False
    overwrite: bool = False
    device: str = "auto"
    quiet: bool = False
    postprocess: bool = True
    rle: str | Path | None = None
    instances: bool = False
    output_format: str | None = None
    level: int = 0
    stream: bool | None = None
    batch_size: int | None = None
    skip_blank_std: float | None = None
    mask_format: str | None = None
    geojson: bool | str = False
    engine: str | None = None
    compile: bool | str = DEFAULT_COMPILE
    #: intra-op threads of the network: ``None`` = the machine's cores (never the training config's)
    threads: int | None = None
    #: checkpoint of a run folder (``best`` | ``last``)
    checkpoint: str = "best"

    @classmethod
    def of(cls, options: "PredictOptions | None" = None, **keywords) -> "PredictOptions":
        """``options`` (default: all defaults) with ``keywords`` replacing fields; an unknown
        keyword is a ``TypeError`` naming it, as for a function."""
        unknown = sorted(set(keywords) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"predict() got unexpected keyword argument(s): {', '.join(unknown)}")
        return dataclasses.replace(options or cls(), **keywords)

    def replace(self, **changes) -> "PredictOptions":
        return dataclasses.replace(self, **changes)
