"""``biomedseg[napari]``: the napari plugin (npe2 manifest ``napari.yaml``).

Dock widgets Model, Predict, Review, Save corrections and Retrain (:mod:`.widgets`) and readers of
biomedseg's outputs (:mod:`.readers`) call the functions the command line calls
(:mod:`.session`, :mod:`.corrections`: no Qt there). The top layer: nothing else in biomedseg
imports this package, napari or Qt.
"""
