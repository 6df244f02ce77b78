"""SE-ResNet-50 (Hu et al. 2018) and CBAM-ResNet-50 (Woo et al. 2018) with TDAF on top,
on timm's ResNet (paper Tab. 3b, "SENet" and "CBAM" baselines): the bottom-up channel
(SE) or channel+spatial (CBAM) attention stays inside each block, and TDAF adds the
top-down attention between flows. Also ResNet-18 at half width (``resnet18_w32``:
32-64-128-256 channels, a quarter of the MACs), the model of the CPU main job.

Stages (L = 4): stem + layer1, layer2, layer3, layer4, as for ResNet.
"""

from __future__ import annotations

from typing import Any

from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ._builder import paired_cfgs
from ._registry import register_model
from .classifier import TDAFClassifier
from .timm_adapter import create_timm_model, timm_cfg

__all__: list[str] = []


def _cfg(timm_name: str) -> dict[str, Any]:
    # The data config (input size, mean/std, crop) of the timm model whose weights fit.
    cfg = timm_cfg(timm_name, tdaf=False, family="senet", first_conv="backbone.stages.0.conv1")
    del cfg["tdaf"], cfg["tdaf_variant"]
    return cfg


default_cfgs: dict[str, dict[str, Any]] = {
    **paired_cfgs("seresnet50", _cfg("seresnet50")),
    **paired_cfgs("cbam_resnet50", _cfg("resnet50")),
    **paired_cfgs("resnet18_w32", _cfg("resnet18")),
}


def _create_senet(variant: str, **kwargs: Any) -> TDAFClassifier:
    """timm's ResNet with ``kwargs`` (``block``, ``layers``, ``block_args`` naming the block
    attention), as stages (TDAF settings go to R2DNS)."""
    cfg = default_cfgs[variant]
    # The architecture goes to timm's ResNet; the rest (num_classes, pretrained, TDAF
    # settings, drop_rate, ...) through the shared timm path.
    arch = {k: kwargs.pop(k) for k in _ARCH_KEYS if k in kwargs}
    return create_timm_model(
        variant.removeprefix("tdaf_"), tdaf=cfg["tdaf"], name=variant, cfg=cfg,
        make_net=lambda **timm_kwargs: ResNet(**arch, **timm_kwargs), **kwargs,
    )


_ARCH_KEYS = ("block", "layers", "block_args", "channels", "stem_width")
_HALF_WIDTH = dict(block=BasicBlock, layers=(2, 2, 2, 2), channels=(32, 64, 128, 256), stem_width=32)


@register_model
def seresnet50(**kwargs: Any) -> TDAFClassifier:
    """SE-ResNet-50 (timm ``seresnet50``) as four stages."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer="se"))
    return _create_senet("seresnet50", **dict(model_args, **kwargs))


@register_model
def tdaf_seresnet50(**kwargs: Any) -> TDAFClassifier:
    """TDAF on SE-ResNet-50 (paper Tab. 3b)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer="se"))
    return _create_senet("tdaf_seresnet50", **dict(model_args, **kwargs))


@register_model
def cbam_resnet50(**kwargs: Any) -> TDAFClassifier:
    """CBAM-ResNet-50 (timm ResNet-50 with CBAM in every bottleneck) as four stages."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer="cbam"))
    return _create_senet("cbam_resnet50", **dict(model_args, **kwargs))


@register_model
def tdaf_cbam_resnet50(**kwargs: Any) -> TDAFClassifier:
    """TDAF on CBAM-ResNet-50 (paper Tab. 3b)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer="cbam"))
    return _create_senet("tdaf_cbam_resnet50", **dict(model_args, **kwargs))


@register_model
def resnet18_w32(**kwargs: Any) -> TDAFClassifier:
    """ResNet-18 at half width (32-64-128-256 channels, a 32-channel stem; timm's ResNet):
    the CPU main job's model (``tdaf demo``), a quarter of ResNet-18's MACs."""
    return _create_senet("resnet18_w32", **dict(_HALF_WIDTH, **kwargs))


@register_model
def tdaf_resnet18_w32(**kwargs: Any) -> TDAFClassifier:
    """TDAF on ResNet-18 at half width (``tdaf demo``)."""
    return _create_senet("tdaf_resnet18_w32", **dict(_HALF_WIDTH, **kwargs))
