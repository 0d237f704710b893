"""Augmentation and normalisation of image + mask pairs."""
