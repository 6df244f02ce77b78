"""Registered model families. Importing this package registers every builder."""

from . import mobilenet, msconcat, resnet, senet, timm_adapter, timm_registry, vgg  # noqa: F401  (registers)
from ._builder import ModelArgumentError
from ._registry import create_model, is_model, list_models, model_cfg, register_model
from .classifier import TDAFClassifier
from .features import BackboneWithFPN, FeatureMaps, StageFeatures

# Every model registered so far also becomes a timm model (timm.create_model("tdaf_resnet50")).
timm_registry.sync_timm_registry()

__all__ = [
    "create_model", "list_models", "is_model", "model_cfg", "register_model", "TDAFClassifier",
    "FeatureMaps", "BackboneWithFPN", "StageFeatures", "ModelArgumentError",
]
