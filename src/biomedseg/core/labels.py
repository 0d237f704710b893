"""Index-mask conventions shared by every layer.

Class-index masks are ``(H, W) uint8`` with classes ``0..K-1`` (K <= 255). Pixels that carry no
label (partial annotations, scribbles: ``ignore_value`` in ``dataset.json`` or the config) hold
:data:`IGNORE_INDEX`; they count in no loss, no metric and no sampling statistic.
"""

#: index-mask value of an unlabelled pixel (never a class: a palette holds at most 255 classes, 0..254)
IGNORE_INDEX = 255


def class_argmax(proba):
    """``(K, ...)`` scores -> ``(...) uint8`` index of the largest (the first on ties), as
    ``proba.argmax(0)``, by a running maximum over the classes: K elementwise passes instead of
    numpy's strided reduction over the leading axis (2048x2048: ~2.5x faster with 2 classes, as
    fast with 7). K <= 256."""
    import numpy as np

    p = np.asarray(proba)
    idx = np.zeros(p.shape[1:], dtype=np.uint8)
    best = p[0]
    for k in range(1, p.shape[0]):
        better = np.greater(p[k], best)
        np.copyto(idx, np.uint8(k), where=better)
        if k + 1 < p.shape[0]:
            best = np.maximum(best, p[k])
    return idx
