"""Registered model families. Importing this package registers every builder."""

from . import resnet  # noqa: F401  (registers the ResNet family)
from . import mobilenet, msconcat, senet, timm_adapter, vgg  # noqa: F401  (more families; tdaf_timm/<name>)
from . import timm_registry
from ._registry import create_model, is_model, list_models, model_cfg, register_model
from .classifier import TDAFClassifier

# Every model registered so far also becomes a timm model (timm.create_model("tdaf_resnet50")).
timm_registry.sync_timm_registry()

__all__ = ["create_model", "list_models", "is_model", "model_cfg", "register_model", "TDAFClassifier"]
