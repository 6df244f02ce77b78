"""ResNet (He et al. 2016), ResNeXt (Xie et al. 2017) and their TDAF forms, on torchvision's
ResNet building blocks.

Stages (L = 4): stem + layer1 (C2), layer2 (C3), layer3 (C4), layer4 (C5). The CIFAR
variants (``*_cifar``) use a 3x3 stride-1 stem without max-pool (total stride 8),
as is usual for 32x32 inputs.
"""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import adapt_input_conv
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ._builder import build_model, check_torchvision_args, paired_cfgs, reject_unknown, take_tdaf_kwargs
from ._pretrained import load_pretrained
from ._registry import register_model
from .classifier import TDAFClassifier

__all__: list[str] = []

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
# CIFAR-10's per-channel training-set statistics (the usual values), shared by every *_cifar model.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cfg(arch: str, cifar: bool = False, **kwargs: Any) -> dict[str, Any]:
    # CIFAR models are evaluated on the image resized straight to 32x32 (no crop): timm's
    # eval transform does the same with crop_pct=1 and crop_mode="squash".
    data = dict(interpolation="bilinear", crop_pct=1.0, crop_mode="squash") if cifar else {}
    return dict(
        **data,
        input_size=(3, 32, 32) if cifar else (3, 224, 224),
        pool_size=(4, 4) if cifar else (7, 7),  # the last map at the default input size (timm's key)
        mean=CIFAR_MEAN if cifar else IMAGENET_MEAN,
        std=CIFAR_STD if cifar else IMAGENET_STD,
        num_classes=10 if cifar else 1000,
        classifier="head.fc",
        first_conv="backbone.stages.0.conv1",
        family="resnet",
        arch=arch,
        **kwargs,
    )


# ResNeXt is ImageNet-only in the paper, so it has no *_cifar variants.
default_cfgs: dict[str, dict[str, Any]] = {
    **paired_cfgs("resnet18", _cfg("resnet18")),
    **paired_cfgs("resnet18_cifar", _cfg("resnet18", cifar=True)),
    **paired_cfgs("resnet34", _cfg("resnet34")),
    **paired_cfgs("resnet34_cifar", _cfg("resnet34", cifar=True)),
    **paired_cfgs("resnet50", _cfg("resnet50")),
    **paired_cfgs("resnet50_cifar", _cfg("resnet50", cifar=True)),
    **paired_cfgs("resnet101", _cfg("resnet101")),
    **paired_cfgs("resnet101_cifar", _cfg("resnet101", cifar=True)),
    **paired_cfgs("resnet152", _cfg("resnet152")),
    **paired_cfgs("resnet152_cifar", _cfg("resnet152", cifar=True)),
    **paired_cfgs("resnext50_32x4d", _cfg("resnext50_32x4d")),
    **paired_cfgs("resnext101_32x8d", _cfg("resnext101_32x8d")),
}


# torchvision's ResNet arguments that pass through (``block``, ``layers``, ``groups``, ...): all
# but the class count (ours) and dilation, which would break the stages' strides.
_RESNET_ARGS = tuple(p for p in inspect.signature(ResNet.__init__).parameters
                     if p not in ("self", "num_classes", "replace_stride_with_dilation"))


def _resnet_stages(net: ResNet, cifar: bool) -> tuple[list[nn.Module], list[int], list[int]]:
    stem = nn.Sequential(OrderedDict(
        conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool, layer1=net.layer1,
    ))
    stages = [stem, net.layer2, net.layer3, net.layer4]
    expansion = net.layer1[0].expansion if hasattr(net.layer1[0], "expansion") else 1
    channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    strides = [1 if cifar else 4, 2, 2, 2]
    return stages, channels, strides


def _create_resnet(
    variant: str,
    *,
    num_classes: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    in_chans: int = 3,
    drop_path_rate: float | None = None,
    output_stride: int | None = None,
    global_pool: str = "avg",
    **kwargs: Any,
) -> TDAFClassifier:
    """torchvision's ResNet with ``kwargs`` (``block``, ``layers``, ``groups``, ...), optionally
    loaded from ``pretrained``, as stages (TDAF settings in ``kwargs`` go to R2DNS).
    ``in_chans`` sets the first conv's input channels (a pretrained 3-channel conv is
    adapted as timm does); ``drop_path_rate`` and ``output_stride`` only take their no-op
    values (torchvision's blocks have no drop path, and no dilation is applied);
    ``global_pool`` is timm's head pooling ("avg", "max", ..., "" for none)."""
    cfg = default_cfgs[variant]
    cifar = variant.endswith("_cifar")
    tdaf_kwargs = take_tdaf_kwargs(variant, cfg, kwargs)
    net_kwargs = kwargs
    reject_unknown(variant, net_kwargs, _RESNET_ARGS)
    check_torchvision_args(variant, drop_path_rate=drop_path_rate, output_stride=output_stride,
                           native_stride=8 if cifar else 32, in_chans=in_chans)
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    net = ResNet(num_classes=max(num_classes, 1), **net_kwargs)
    if cifar:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    if pretrained is not None:
        load_pretrained(net, pretrained, variant, classifier=("fc",))
    if in_chans != 3:  # after loading: timm's adaptation of a pretrained 3-channel conv
        conv = net.conv1
        new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
        net.conv1 = new
    stages, channels, strides = _resnet_stages(net, cifar)
    # timm numbers a ResNet's feature levels from its stem (level 0, act1), which is inside stage 1 here.
    stem = [dict(num_chs=64, reduction=1 if cifar else 2, module="backbone.stages.0.relu")]
    model = build_model(variant, stages, channels, strides, cfg, tdaf=cfg["tdaf"], num_classes=num_classes,
                        drop_rate=drop_rate, global_pool=global_pool, in_chans=in_chans, stem_info=stem,
                        from_trained=pretrained is not None,
                        **tdaf_kwargs)
    if num_classes > 0:
        model.head.fc = net.fc  # keeps pretrained classifier weights when the class count matches
    return model


@register_model
def resnet18(**kwargs: Any) -> TDAFClassifier:
    """ResNet-18."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet("resnet18", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet18(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-18."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet("tdaf_resnet18", **dict(model_args, **kwargs))


@register_model
def resnet18_cifar(**kwargs: Any) -> TDAFClassifier:
    """ResNet-18 for 32x32 (CIFAR) input."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet("resnet18_cifar", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet18_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-18 for 32x32 (CIFAR) input."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet("tdaf_resnet18_cifar", **dict(model_args, **kwargs))


@register_model
def resnet34(**kwargs: Any) -> TDAFClassifier:
    """ResNet-34."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet("resnet34", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet34(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-34."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet("tdaf_resnet34", **dict(model_args, **kwargs))


@register_model
def resnet34_cifar(**kwargs: Any) -> TDAFClassifier:
    """ResNet-34 for 32x32 (CIFAR) input."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet("resnet34_cifar", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet34_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-34 for 32x32 (CIFAR) input."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet("tdaf_resnet34_cifar", **dict(model_args, **kwargs))


@register_model
def resnet50(**kwargs: Any) -> TDAFClassifier:
    """ResNet-50."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet("resnet50", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet50(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-50."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet("tdaf_resnet50", **dict(model_args, **kwargs))


@register_model
def resnet50_cifar(**kwargs: Any) -> TDAFClassifier:
    """ResNet-50 for 32x32 (CIFAR) input."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet("resnet50_cifar", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet50_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-50 for 32x32 (CIFAR) input."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet("tdaf_resnet50_cifar", **dict(model_args, **kwargs))


@register_model
def resnet101(**kwargs: Any) -> TDAFClassifier:
    """ResNet-101."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_resnet("resnet101", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet101(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-101."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_resnet("tdaf_resnet101", **dict(model_args, **kwargs))


@register_model
def resnet101_cifar(**kwargs: Any) -> TDAFClassifier:
    """ResNet-101 for 32x32 (CIFAR) input."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_resnet("resnet101_cifar", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet101_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-101 for 32x32 (CIFAR) input."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_resnet("tdaf_resnet101_cifar", **dict(model_args, **kwargs))


@register_model
def resnet152(**kwargs: Any) -> TDAFClassifier:
    """ResNet-152."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return _create_resnet("resnet152", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet152(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-152."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return _create_resnet("tdaf_resnet152", **dict(model_args, **kwargs))


@register_model
def resnet152_cifar(**kwargs: Any) -> TDAFClassifier:
    """ResNet-152 for 32x32 (CIFAR) input."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return _create_resnet("resnet152_cifar", **dict(model_args, **kwargs))


@register_model
def tdaf_resnet152_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNet-152 for 32x32 (CIFAR) input."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return _create_resnet("tdaf_resnet152_cifar", **dict(model_args, **kwargs))


@register_model
def resnext50_32x4d(**kwargs: Any) -> TDAFClassifier:
    """ResNeXt-50 32x4d."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4)
    return _create_resnet("resnext50_32x4d", **dict(model_args, **kwargs))


@register_model
def tdaf_resnext50_32x4d(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNeXt-50 32x4d."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4)
    return _create_resnet("tdaf_resnext50_32x4d", **dict(model_args, **kwargs))


@register_model
def resnext101_32x8d(**kwargs: Any) -> TDAFClassifier:
    """ResNeXt-101 32x8d."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=32, width_per_group=8)
    return _create_resnet("resnext101_32x8d", **dict(model_args, **kwargs))


@register_model
def tdaf_resnext101_32x8d(**kwargs: Any) -> TDAFClassifier:
    """TDAF-ResNeXt-101 32x8d."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=32, width_per_group=8)
    return _create_resnet("tdaf_resnext101_32x8d", **dict(model_args, **kwargs))
