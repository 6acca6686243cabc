"""Segmentation networks by name, and safe loading of local weights."""

from pseudoseg.models.factory import MODEL_NAMES, NetworkRecipe, build_model, describe_architecture
from pseudoseg.models.weights import load_weights

__all__ = ["MODEL_NAMES", "NetworkRecipe", "build_model", "describe_architecture", "load_weights"]
