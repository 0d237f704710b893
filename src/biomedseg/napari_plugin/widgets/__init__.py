"""The dock widgets (magicgui containers); each takes the viewer as ``napari_viewer``."""

from biomedseg.napari_plugin.widgets.model import ModelWidget
from biomedseg.napari_plugin.widgets.predict import PredictWidget
from biomedseg.napari_plugin.widgets.retrain import RetrainWidget
from biomedseg.napari_plugin.widgets.review import ReviewWidget
from biomedseg.napari_plugin.widgets.save import SaveWidget

__all__ = ["ModelWidget", "PredictWidget", "RetrainWidget", "ReviewWidget", "SaveWidget"]
