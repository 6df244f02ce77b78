"""SimpleBaseline (Xiao, Wu and Wei 2018) and its TDAF form, paper §4.3, Tab. 5.

SimpleBaseline: a ResNet, then three 4x4 stride-2 deconvolutions (256 channels, BN,
ReLU), then a 1x1 conv to one heat-map per joint: a 256x192 crop gives 64x48 maps.

TDAF (§4.3: "its deconvolutional layers modified into the TDAF version with 3 recursive
flows"): R2DNS runs over the three deconvolution stages (strides 1/2, the up-sampling
convention of :mod:`tdaf.r2dns`). Every flow starts from the backbone's C5 map, the earlier
flows from C5 down-sampled (Eq. 2), and flow n's deconvolution outputs are gated by
ANAR applied to flow n-1's (Eq. 5); only the last flow reaches the 1x1 heat-map conv.
``tdaf_backbone=True`` also runs the ResNet itself as R2DNS with the same settings.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..models import create_model, register_model
from ..models._builder import (
    ModelArgumentError, paired_cfgs, reject_unknown, take_tdaf_kwargs, tdaf_settings, with_attention_init,
)
from ..r2dns import R2DNS, StageNet

__all__ = ["SimpleBaselinePose", "deconv_stages", "HEATMAP_STRIDE"]

TASK = "pose"
HEATMAP_STRIDE = 4  # input size / heat-map size (three x2 deconvolutions after the stride-32 C5)
HEAD_CHANNELS = 256


def _cfg(backbone: str, **kwargs: Any) -> dict[str, Any]:
    return dict(
        task=TASK,
        backbone=backbone,
        input_size=(3, 256, 192),
        heatmap_stride=HEATMAP_STRIDE,
        num_joints=17,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        family="simplebaseline",
        **kwargs,
    )


default_cfgs: dict[str, dict[str, Any]] = {
    # resnet18: ours, for tests and quick runs (the paper reports ResNet-50/101)
    **paired_cfgs("simplebaseline_resnet18", _cfg("resnet18")),
    **paired_cfgs("simplebaseline_resnet50", _cfg("resnet50")),
    **paired_cfgs("simplebaseline_resnet101", _cfg("resnet101")),
}


def deconv_stages(in_channels: int, channels: int = HEAD_CHANNELS, num: int = 3) -> list[nn.Module]:
    """SimpleBaseline's head as stages: ``num`` x (4x4 stride-2 transposed conv, BN, ReLU),
    initialised as the reference (weights N(0, 0.001), BN weight 1, bias 0)."""
    stages: list[nn.Module] = []
    for i in range(num):
        deconv = nn.ConvTranspose2d(in_channels if i == 0 else channels, channels, kernel_size=4, stride=2,
                                    padding=1, output_padding=0, bias=False)
        nn.init.normal_(deconv.weight, std=0.001)
        bn = nn.BatchNorm2d(channels)
        stages.append(nn.Sequential(deconv, bn, nn.ReLU(inplace=True)))
    return stages


class SimpleBaselinePose(nn.Module):
    """ResNet backbone -> deconvolution head (plain :class:`StageNet` or :class:`R2DNS`) ->
    1x1 conv to ``num_joints`` heat-maps at 1/4 of the input size.

    ``forward(x)`` returns ``(B, num_joints, H/4, W/4)``; ``pretrained_cfg`` records the
    architecture (``task: pose``, the TDAF settings of the head)."""

    def __init__(self, backbone: StageNet | R2DNS, head: StageNet | R2DNS, num_joints: int,
                 pretrained_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.final_layer = nn.Conv2d(head.channels[-1], num_joints, kernel_size=1)
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)
        self.num_joints = num_joints
        self.pretrained_cfg = pretrained_cfg
        self.default_cfg = pretrained_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5 = self.backbone(x)[-1]
        return self.final_layer(self.head(c5)[-1])


def _create_simplebaseline(
    variant: str,
    *,
    num_joints: int = 17,
    backbone_weights: str | os.PathLike[str] | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    tdaf_backbone: bool = False,
    **kwargs: Any,
) -> SimpleBaselinePose:
    cfg = default_cfgs[variant]
    tdaf_kwargs = take_tdaf_kwargs(variant, cfg, kwargs)
    reject_unknown(variant, kwargs)
    if not isinstance(num_joints, int) or isinstance(num_joints, bool) or num_joints < 1:
        raise ValueError(f"num_joints: got {num_joints!r}; allowed: an integer >= 1")
    if backbone_weights is not None and pretrained is not None:
        raise ValueError("backbone_weights, pretrained: give one (both name the ImageNet backbone file)")
    weights = backbone_weights if backbone_weights is not None else pretrained
    if tdaf_backbone and not cfg["tdaf"]:
        raise ModelArgumentError(f"tdaf_backbone: {variant!r} is a plain model (use {cfg['tdaf_variant']!r})")
    name = ("tdaf_" if tdaf_backbone else "") + cfg["backbone"]
    # The classifier (with its ImageNet fc) only carries the weights; its stages are the backbone.
    net = create_model(name, pretrained=weights, **(tdaf_kwargs if tdaf_backbone else {}))
    backbone = net.backbone
    c5 = backbone.channels[-1]
    stages = deconv_stages(c5)
    channels, strides = [HEAD_CHANNELS] * 3, [0.5] * 3
    head: StageNet | R2DNS
    if cfg["tdaf"]:
        head = R2DNS(stages, channels, strides, in_chans=c5, **with_attention_init(tdaf_kwargs, weights is not None))
    else:
        head = StageNet(stages, channels, strides, in_chans=c5)
    pcfg = dict(cfg, architecture=variant, num_joints=num_joints, tdaf_backbone=bool(tdaf_backbone))
    pcfg.update(tdaf_settings(head))
    return SimpleBaselinePose(backbone, head, num_joints, pcfg)


@register_model
def simplebaseline_resnet18(**kwargs: Any) -> SimpleBaselinePose:
    """SimpleBaseline on ResNet-18 (ours: tests and quick runs)."""
    return _create_simplebaseline("simplebaseline_resnet18", **kwargs)


@register_model
def tdaf_simplebaseline_resnet18(**kwargs: Any) -> SimpleBaselinePose:
    """TDAF-SimpleBaseline on ResNet-18 (ours: tests and quick runs)."""
    return _create_simplebaseline("tdaf_simplebaseline_resnet18", **kwargs)


@register_model
def simplebaseline_resnet50(**kwargs: Any) -> SimpleBaselinePose:
    """SimpleBaseline on ResNet-50 (Tab. 5)."""
    return _create_simplebaseline("simplebaseline_resnet50", **kwargs)


@register_model
def tdaf_simplebaseline_resnet50(**kwargs: Any) -> SimpleBaselinePose:
    """TDAF-SimpleBaseline on ResNet-50: R2DNS over the deconvolution head (Tab. 5)."""
    return _create_simplebaseline("tdaf_simplebaseline_resnet50", **kwargs)


@register_model
def simplebaseline_resnet101(**kwargs: Any) -> SimpleBaselinePose:
    """SimpleBaseline on ResNet-101 (Tab. 5)."""
    return _create_simplebaseline("simplebaseline_resnet101", **kwargs)


@register_model
def tdaf_simplebaseline_resnet101(**kwargs: Any) -> SimpleBaselinePose:
    """TDAF-SimpleBaseline on ResNet-101: R2DNS over the deconvolution head (Tab. 5)."""
    return _create_simplebaseline("tdaf_simplebaseline_resnet101", **kwargs)
