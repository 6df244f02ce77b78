"""SE-ResNet-50 (Hu et al. 2018) and CBAM-ResNet-50 (Woo et al. 2018) with TDAF on top,
on timm's ResNet (paper Tab. 3b, "SENet" and "CBAM" baselines): the bottom-up channel
(SE) or channel+spatial (CBAM) attention stays inside each block, and TDAF adds the
top-down attention between flows.

Stages (L = 4): stem + layer1, layer2, layer3, layer4, as for ResNet.
"""

from __future__ import annotations

from typing import Any

from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from ._registry import register_model
from .classifier import TDAFClassifier
from .timm_adapter import create_timm_model, timm_cfg

__all__: list[str] = []


def _cbam_resnet50(**kwargs: Any) -> nn.Module:
    # timm registers no CBAM-ResNet; its ResNet takes CBAM as the block attention layer.
    return ResNet(block=Bottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer="cbam"), **kwargs)


def _cfg(plain: str, tdaf: bool) -> dict[str, Any]:
    cfg = timm_cfg("resnet50" if plain == "cbam_resnet50" else plain, tdaf=tdaf, family="senet",
                   first_conv="backbone.stages.0.conv1")
    cfg.pop("baseline" if tdaf else "tdaf_variant")
    cfg["baseline" if tdaf else "tdaf_variant"] = plain if tdaf else "tdaf_" + plain
    return cfg


def _build(plain: str, tdaf: bool, **kwargs: Any) -> TDAFClassifier:
    name = ("tdaf_" if tdaf else "") + plain
    make_net = _cbam_resnet50 if plain == "cbam_resnet50" else None
    return create_timm_model(plain, tdaf=tdaf, name=name, make_net=make_net, cfg=_cfg(plain, tdaf), **kwargs)


@register_model(_cfg("seresnet50", False))
def seresnet50(**kwargs: Any) -> TDAFClassifier:
    """SE-ResNet-50 (timm ``seresnet50``) as four stages."""
    return _build("seresnet50", False, **kwargs)


@register_model(_cfg("seresnet50", True))
def tdaf_seresnet50(**kwargs: Any) -> TDAFClassifier:
    """TDAF on SE-ResNet-50 (paper Tab. 3b)."""
    return _build("seresnet50", True, **kwargs)


@register_model(_cfg("cbam_resnet50", False))
def cbam_resnet50(**kwargs: Any) -> TDAFClassifier:
    """CBAM-ResNet-50 (timm ResNet-50 with CBAM in every bottleneck) as four stages."""
    return _build("cbam_resnet50", False, **kwargs)


@register_model(_cfg("cbam_resnet50", True))
def tdaf_cbam_resnet50(**kwargs: Any) -> TDAFClassifier:
    """TDAF on CBAM-ResNet-50 (paper Tab. 3b)."""
    return _build("cbam_resnet50", True, **kwargs)
