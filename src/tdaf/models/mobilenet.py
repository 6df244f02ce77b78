"""MobileNetV1 (Howard et al. 2017) and TDAF-MobileNetV1, on timm's ``mobilenetv1_100``
(paper §4.1, Tab. 3a: depthwise ANAR, 2 flows).

Stages (L = 5): the groups of depthwise-separable blocks between the stride-2 blocks,
which are timm's ``blocks.0`` .. ``blocks.4`` (the stem joins the first group; outputs of
64, 128, 256, 512 and 1024 channels at reductions 2, 4, 8, 16, 32). The ANARs are
depthwise-separable, as in the paper.
"""

from __future__ import annotations

from typing import Any

from ._builder import paired_cfgs
from ._registry import register_model
from .classifier import TDAFClassifier
from .timm_adapter import create_timm_model, timm_cfg

__all__: list[str] = []

_TIMM_NAME = "mobilenetv1_100"


def _cfg() -> dict[str, Any]:
    cfg = timm_cfg(_TIMM_NAME, tdaf=False, family="mobilenet", first_conv="backbone.stages.0.conv_stem")
    del cfg["tdaf"], cfg["tdaf_variant"]
    return cfg


default_cfgs: dict[str, dict[str, Any]] = paired_cfgs("mobilenetv1", _cfg())


def _create_mobilenet(variant: str, **kwargs: Any) -> TDAFClassifier:
    cfg = default_cfgs[variant]
    return create_timm_model(_TIMM_NAME, tdaf=cfg["tdaf"], name=variant, cfg=cfg, **kwargs)


@register_model
def mobilenetv1(**kwargs: Any) -> TDAFClassifier:
    """MobileNetV1 (timm ``mobilenetv1_100``) as five stages."""
    model_args = dict(stage_levels=(0, 1, 2, 3, 4))
    return _create_mobilenet("mobilenetv1", **dict(model_args, **kwargs))


@register_model
def tdaf_mobilenetv1(**kwargs: Any) -> TDAFClassifier:
    """TDAF-MobileNetV1: depthwise ANAR, 2 flows by default (paper Tab. 3a)."""
    model_args = dict(stage_levels=(0, 1, 2, 3, 4), flows=2, depthwise=True)
    return _create_mobilenet("tdaf_mobilenetv1", **dict(model_args, **kwargs))
