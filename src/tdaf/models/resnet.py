"""ResNet (He et al. 2016) and TDAF-ResNet, on torchvision's ResNet building blocks.

Stages (L = 4): stem + layer1 (C2), layer2 (C3), layer3 (C4), layer4 (C5). The CIFAR
variants (``*_cifar``) use a 3x3 stride-1 stem without max-pool (total stride 8),
as is usual for 32x32 inputs.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ._pretrained import load_pretrained
from ._builder import register_variants, staged_backbone, tdaf_settings
from .classifier import TDAFClassifier

__all__: list[str] = []

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

_ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet34": dict(block=BasicBlock, layers=(3, 4, 6, 3)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    "resnet101": dict(block=Bottleneck, layers=(3, 4, 23, 3)),
    "resnet152": dict(block=Bottleneck, layers=(3, 8, 36, 3)),
    # ResNeXt (Xie et al. 2017) is torchvision's ResNet with grouped 3x3 convs (paper Tab. 3a).
    "resnext50_32x4d": dict(block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=32, width_per_group=8),
}
# The paper uses these on ImageNet only, so they get no *_cifar variants.
_IMAGENET_ONLY = frozenset({"resnext50_32x4d", "resnext101_32x8d"})


def _cfg(cifar: bool, **kwargs: Any) -> dict[str, Any]:
    base = dict(
        input_size=(3, 32, 32) if cifar else (3, 224, 224),
        mean=CIFAR_MEAN if cifar else IMAGENET_MEAN,
        std=CIFAR_STD if cifar else IMAGENET_STD,
        num_classes=10 if cifar else 1000,
        classifier="head.fc",
        first_conv="backbone.stages.0.conv1",
        family="resnet",
    )
    base.update(kwargs)
    return base


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
    arch: str,
    *,
    tdaf: bool,
    cifar: bool = False,
    num_classes: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    flows: int = 3,
    anar: str = "anar3",
    eta: float = 0.5,
    downsample: str = "avg",
    drop_rate: float = 0.0,
    **arch_kwargs: Any,
) -> TDAFClassifier:
    spec = dict(_ARCHS[arch], **arch_kwargs)
    name = f"{'tdaf_' if tdaf else ''}{arch}{'_cifar' if cifar else ''}"
    cfg = _cfg(cifar, tdaf=tdaf, arch=arch)
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    net = ResNet(num_classes=max(num_classes, 1), **spec)
    if cifar:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    if pretrained is not None:
        load_pretrained(net, pretrained, name, classifier=("fc",))
    stages, channels, strides = _resnet_stages(net, cifar)
    backbone = staged_backbone(stages, channels, strides, tdaf=tdaf, flows=flows, anar=anar, eta=eta,
                               downsample=downsample)
    cfg.update(tdaf_settings(backbone), architecture=name)
    model = TDAFClassifier(backbone, num_classes, drop_rate=drop_rate, pretrained_cfg=cfg)
    if num_classes > 0:
        model.head.fc = net.fc  # keeps pretrained classifier weights when the class count matches
    return model


for _arch in _ARCHS:
    register_variants(
        _arch, _create_resnet, _cfg, _arch.replace("resnext", "ResNeXt-").replace("resnet", "ResNet-"),
        cifar_variants=_arch not in _IMAGENET_ONLY,
    )
