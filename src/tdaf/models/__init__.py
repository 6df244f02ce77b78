"""Registered model families. Importing this package registers every builder."""

from . import resnet  # noqa: F401  (registers the ResNet family)
from ._registry import create_model, is_model, list_models, model_cfg, register_model
from .classifier import TDAFClassifier

__all__ = ["create_model", "list_models", "is_model", "model_cfg", "register_model", "TDAFClassifier"]
