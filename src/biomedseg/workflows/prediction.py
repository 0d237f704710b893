"""``biomedseg.predict`` and the ``predict`` command: :func:`biomedseg.inference.predict.batch.predict`
with the trust hooks of :func:`biomedseg.trust.predictions.trust_hooks` (``predictions.csv``,
``--uncertainty`` maps, out-of-distribution warnings). They live here because ``inference/`` (row 10)
may not import ``trust/`` (row 11)."""

from __future__ import annotations


def predict(run, inputs, out, options=None, **keywords):
    """:func:`biomedseg.inference.predict.batch.predict` (same arguments) that also writes
    ``OUT/predictions.csv`` (``summary.predictions``), ``<stem>_uncertainty.tif`` with
    ``uncertainty=True``, and warns about inputs unlike the training data (``summary.flagged``)."""
    from biomedseg.inference.predict.batch import predict as predict_plain
    from biomedseg.trust.predictions import trust_hooks

    return predict_plain(run, inputs, out, options, hooks=trust_hooks, **keywords)
