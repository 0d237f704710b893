"""Architectures behind one registry: ``create_model(name, in_channels, n_classes, **kw)``."""

from biomedseg.models.registry import count_parameters, create_model, list_models, register

__all__ = ["create_model", "list_models", "register", "count_parameters"]
