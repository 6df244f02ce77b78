"""MobileNetV1 (Howard et al. 2017) and TDAF-MobileNetV1, on timm's ``mobilenetv1_100``
(paper §4.1, Tab. 3a: depthwise ANAR, 2 flows).

Stages (L = 5): the groups of depthwise-separable blocks between the stride-2 blocks,
which are timm's ``blocks.0`` .. ``blocks.4`` (the stem joins the first group; outputs of
64, 128, 256, 512 and 1024 channels at reductions 2, 4, 8, 16, 32). The ANARs are
depthwise-separable, as in the paper.
"""

from __future__ import annotations

from typing import Any

from ._registry import register_model
from .classifier import TDAFClassifier
from .timm_adapter import create_timm_model, timm_cfg

__all__: list[str] = []

_TIMM_NAME = "mobilenetv1_100"
_STAGE_LEVELS = (0, 1, 2, 3, 4)


def _cfg(tdaf: bool) -> dict[str, Any]:
    cfg = timm_cfg(_TIMM_NAME, tdaf=tdaf, family="mobilenet", first_conv="backbone.stages.0.conv_stem")
    cfg.pop("baseline" if tdaf else "tdaf_variant")
    cfg["baseline" if tdaf else "tdaf_variant"] = "mobilenetv1" if tdaf else "tdaf_mobilenetv1"
    return cfg


@register_model(_cfg(False))
def mobilenetv1(**kwargs: Any) -> TDAFClassifier:
    """MobileNetV1 (timm ``mobilenetv1_100``) as five stages."""
    return create_timm_model(_TIMM_NAME, tdaf=False, name="mobilenetv1", cfg=_cfg(False),
                             stage_levels=_STAGE_LEVELS, **kwargs)


@register_model(_cfg(True))
def tdaf_mobilenetv1(flows: int = 2, depthwise: bool = True, **kwargs: Any) -> TDAFClassifier:
    """TDAF-MobileNetV1: depthwise ANAR, 2 flows by default (paper Tab. 3a)."""
    return create_timm_model(_TIMM_NAME, tdaf=True, name="tdaf_mobilenetv1", cfg=_cfg(True),
                             stage_levels=_STAGE_LEVELS, flows=flows, depthwise=depthwise, **kwargs)
