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


def predict_on_cluster(run, inputs, out, options=None, **keywords):
    """:func:`biomedseg.inference.predict.distributed.predict_distributed` (same arguments) with the
    trust rows computed in the tasks (:func:`biomedseg.trust.predictions.trust_rows`) and
    ``predictions.csv`` written here from them (the tasks' warnings stay in the workers' logs: each
    flagged input is named here again)."""
    from biomedseg.inference.predict.distributed import predict_distributed
    from biomedseg.inference.predict.outputs import collect_inputs
    from biomedseg.trust.predictions import trust_rows, write_rows

    summary = predict_distributed(run, inputs, out, options, hooks=trust_rows, **keywords)
    write_rows(out, collect_inputs(inputs), summary, warn_each=True)
    return summary
