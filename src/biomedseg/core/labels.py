"""Index-mask conventions shared by every layer.

Class-index masks are ``(H, W) uint8`` with classes ``0..K-1`` (K <= 255). Pixels that carry no
label (partial annotations, scribbles: ``ignore_value`` in ``dataset.json`` or the config) hold
:data:`IGNORE_INDEX`; they count in no loss, no metric and no sampling statistic.
"""

#: index-mask value of an unlabelled pixel (never a class: a palette holds at most 255 classes, 0..254)
IGNORE_INDEX = 255
