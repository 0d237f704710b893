"""Which predictions to trust: pooled bottleneck features (:mod:`.features`), the description of
the training data stored in the run (:mod:`.descriptor`) and out-of-distribution scores
(:mod:`.ood`). Uncertainty and calibration of the probabilities themselves are in
:mod:`biomedseg.metrics.uncertainty` and :mod:`biomedseg.metrics.calibration`."""
