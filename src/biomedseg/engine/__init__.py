"""The sliding-window engine: tile grid, Gaussian blending, test-time augmentation, autocast.

Used by validation (:mod:`biomedseg.training`) and prediction (:mod:`biomedseg.inference`), so it
sits below both and imports neither (nor runs, evaluation, reports or the CLI).

- :mod:`~biomedseg.engine.defaults`: the engine's defaults (overlap, inference batch size), torch-free;
- :mod:`~biomedseg.engine.sliding_window`: :class:`SlidingWindowPredictor` (in-memory images), the
  MONAI tile grid, TTA, autocast and :func:`optimize_for_inference`;
- :mod:`~biomedseg.engine.compiled`: :class:`CompiledForward` (the inference network under
  ``torch.compile``, one batch shape, eager fallback) and the ``--compile auto`` rule;
- :mod:`~biomedseg.engine.band_accumulator`: the same grid and blending one band of rows at a time
  (used by the streaming predictor).
"""
