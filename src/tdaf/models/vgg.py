"""VGG (Simonyan & Zisserman 2014) and TDAF-VGG, on torchvision's VGG (paper §4.1, Tab. 2, 3a).

Stages (L = 5): the five conv blocks of ``features``, each ending in its 2x2 max-pool
(stride 2 each, total 32), so the ANAR gates act on each block's pooled output, as the
paper's "ANAR modules after each max-pooling layer". The head is VGG's own: 7x7 adaptive
average pool and three fully connected layers.

CIFAR variants (``*_cifar``) keep the same network and head at 32x32 input (the 1x1 map
after block 5 is replicated to 7x7 by the adaptive pool): the paper's Tab. 2 counts
138.4M parameters for CIFAR VGG16, which is torchvision's VGG16 with its ImageNet head.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
import torchvision
from timm.models import adapt_input_conv
from torch import nn

from ._builder import build_model, check_torchvision_args, paired_cfgs, reject_unknown, take_tdaf_kwargs
from ._pretrained import load_pretrained
from ._registry import register_model
from .classifier import TDAFClassifier
from .resnet import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["VGGHead", "vgg_stages"]

class VGGHead(nn.Module):
    """VGG's classifier as a TDAF head: 7x7 adaptive average pool, flatten, FC-ReLU-Dropout
    twice (``pre_logits``), then ``fc`` (timm's head contract: ``forward(x, pre_logits)``,
    ``reset(num_classes, pool_type)``). ``pool_type=""`` (timm's "no global pooling") passes
    the feature map through unchanged, which only works without a classifier: VGG's hidden
    layers need the pooled 7x7 map."""

    def __init__(self, avgpool: nn.Module, classifier: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        layers = list(classifier.children())
        self.pool = avgpool
        self.pool_type = "avg"
        self.pre_logits = nn.Sequential(*layers[:-1])
        self.hidden_size = layers[-1].in_features
        self.fc: nn.Module = layers[-1] if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.pool_type:
            if not isinstance(self.fc, nn.Identity):
                raise ValueError("global_pool: '' (no pooling) leaves the map unpooled, which VGG's classifier cannot "
                                 "take; reset_classifier(num_classes, 'avg') pools again")
            return x
        x = torch.flatten(self.pool(x), 1)
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        pool_type = self.pool_type if pool_type is None else pool_type
        if pool_type not in ("avg", ""):
            raise ValueError(f"global_pool: got {pool_type!r}; VGG's head average-pools to 7x7 (allowed: 'avg', or '' "
                             f"for no pooling and no classifier)")
        self.pool_type = pool_type
        self.fc = nn.Linear(self.hidden_size, num_classes) if num_classes > 0 else nn.Identity()


def vgg_stages(features: nn.Sequential) -> tuple[list[nn.Module], list[int], list[int]]:
    """Split VGG's ``features`` after each max-pool: stages, output channels, strides."""
    stages: list[nn.Module] = []
    channels: list[int] = []
    block: list[tuple[str, nn.Module]] = []
    width = 0
    for name, layer in features.named_children():
        block.append((name, layer))
        if isinstance(layer, nn.Conv2d):
            width = layer.out_channels
        if isinstance(layer, nn.MaxPool2d):
            # Keep torchvision's indices as names, so a stage's keys read "features.<i>".
            stages.append(nn.Sequential(OrderedDict(block)))
            channels.append(width)
            block = []
    if block:
        raise ValueError("VGG features do not end with a max-pool")
    return stages, channels, [2] * len(stages)


def _build_for_loading(arch: str, num_classes: int, drop_rate: float) -> nn.Module:
    """torchvision's VGG without its random initialisation, which takes seconds for the
    25088x4096 layer and which the file overwrites anyway: built on the meta device, then
    given memory. Only what a file may lack is initialised (as torchvision does): the last
    layer, skipped when the class count differs, and the BatchNorm batch counters."""
    current = torch.get_default_device()
    with torch.device("meta"):
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, dropout=drop_rate)
    net = net.to_empty(device=current)
    fc = net.classifier[6]
    nn.init.normal_(fc.weight, 0, 0.01)
    nn.init.zeros_(fc.bias)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked.zero_()
    return net


def _cfg(arch: str, cifar: bool = False, **kwargs: Any) -> dict[str, Any]:
    # CIFAR models are evaluated on the image resized straight to 32x32 (no crop): timm's
    # eval transform does the same with crop_pct=1 and crop_mode="squash".
    data = dict(interpolation="bilinear", crop_pct=1.0, crop_mode="squash") if cifar else {}
    return dict(
        **data,
        input_size=(3, 32, 32) if cifar else (3, 224, 224),
        pool_size=(1, 1) if cifar else (7, 7),  # the last map at the default input size (timm's key)
        mean=CIFAR_MEAN if cifar else IMAGENET_MEAN,
        std=CIFAR_STD if cifar else IMAGENET_STD,
        num_classes=10 if cifar else 1000,
        classifier="head.fc",
        first_conv="backbone.stages.0.0",
        family="vgg",
        arch=arch,
        **kwargs,
    )


default_cfgs: dict[str, dict[str, Any]] = {
    **paired_cfgs("vgg16", _cfg("vgg16")),
    **paired_cfgs("vgg16_cifar", _cfg("vgg16", cifar=True)),
    **paired_cfgs("vgg19", _cfg("vgg19")),
    **paired_cfgs("vgg19_cifar", _cfg("vgg19", cifar=True)),
    **paired_cfgs("vgg16_bn", _cfg("vgg16_bn")),
    **paired_cfgs("vgg16_bn_cifar", _cfg("vgg16_bn", cifar=True)),
    **paired_cfgs("vgg19_bn", _cfg("vgg19_bn")),
    **paired_cfgs("vgg19_bn_cifar", _cfg("vgg19_bn", cifar=True)),
}


def _create_vgg(
    variant: str,
    *,
    num_classes: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.5,
    in_chans: int = 3,
    drop_path_rate: float | None = None,
    output_stride: int | None = None,
    global_pool: str = "avg",
    **kwargs: Any,
) -> TDAFClassifier:
    """torchvision's VGG ``cfg["arch"]``, optionally loaded from ``pretrained``, as five
    stages with VGG's own head (TDAF settings in ``tdaf_kwargs`` go to R2DNS).
    ``in_chans`` sets the first conv's input channels (a pretrained 3-channel conv is
    adapted as timm does); ``drop_path_rate`` and ``output_stride`` only take their no-op
    values; ``global_pool`` is "avg" or "" (no pooling, no classifier: the last map)."""
    cfg = default_cfgs[variant]
    tdaf_kwargs = take_tdaf_kwargs(variant, cfg, kwargs)
    reject_unknown(variant, kwargs)
    check_torchvision_args(variant, drop_path_rate=drop_path_rate, output_stride=output_stride, native_stride=32,
                           in_chans=in_chans)
    arch = cfg["arch"]
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    if pretrained is None:
        net = torchvision.models.get_model(arch, weights=None, num_classes=max(num_classes, 1), dropout=drop_rate)
    else:
        net = _build_for_loading(arch, max(num_classes, 1), drop_rate)
        load_pretrained(net, pretrained, variant, classifier=("classifier.6",))
    if in_chans != 3:  # after loading: timm's adaptation of a pretrained 3-channel conv
        conv = net.features[0]
        new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
            new.bias.copy_(conv.bias)
        net.features[0] = new
    stages, channels, strides = vgg_stages(net.features)
    head = VGGHead(net.avgpool, net.classifier, num_classes)
    if global_pool != head.pool_type:
        head.reset(num_classes, global_pool)
    model = build_model(variant, stages, channels, strides, cfg, tdaf=cfg["tdaf"], num_classes=num_classes,
                        head=head, in_chans=in_chans, from_trained=pretrained is not None, **tdaf_kwargs)
    model.head_hidden_size = head.hidden_size
    return model


@register_model
def vgg16(**kwargs: Any) -> TDAFClassifier:
    """VGG16."""
    return _create_vgg("vgg16", **kwargs)


@register_model
def tdaf_vgg16(**kwargs: Any) -> TDAFClassifier:
    """TDAF-VGG16."""
    return _create_vgg("tdaf_vgg16", **kwargs)


@register_model
def vgg16_cifar(**kwargs: Any) -> TDAFClassifier:
    """VGG16 for 32x32 (CIFAR) input."""
    return _create_vgg("vgg16_cifar", **kwargs)


@register_model
def tdaf_vgg16_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-VGG16 for 32x32 (CIFAR) input."""
    return _create_vgg("tdaf_vgg16_cifar", **kwargs)


@register_model
def vgg19(**kwargs: Any) -> TDAFClassifier:
    """VGG19."""
    return _create_vgg("vgg19", **kwargs)


@register_model
def tdaf_vgg19(**kwargs: Any) -> TDAFClassifier:
    """TDAF-VGG19."""
    return _create_vgg("tdaf_vgg19", **kwargs)


@register_model
def vgg19_cifar(**kwargs: Any) -> TDAFClassifier:
    """VGG19 for 32x32 (CIFAR) input."""
    return _create_vgg("vgg19_cifar", **kwargs)


@register_model
def tdaf_vgg19_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-VGG19 for 32x32 (CIFAR) input."""
    return _create_vgg("tdaf_vgg19_cifar", **kwargs)


@register_model
def vgg16_bn(**kwargs: Any) -> TDAFClassifier:
    """VGG16 with BatchNorm."""
    return _create_vgg("vgg16_bn", **kwargs)


@register_model
def tdaf_vgg16_bn(**kwargs: Any) -> TDAFClassifier:
    """TDAF-VGG16 with BatchNorm."""
    return _create_vgg("tdaf_vgg16_bn", **kwargs)


@register_model
def vgg16_bn_cifar(**kwargs: Any) -> TDAFClassifier:
    """VGG16 with BatchNorm for 32x32 (CIFAR) input."""
    return _create_vgg("vgg16_bn_cifar", **kwargs)


@register_model
def tdaf_vgg16_bn_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-VGG16 with BatchNorm for 32x32 (CIFAR) input."""
    return _create_vgg("tdaf_vgg16_bn_cifar", **kwargs)


@register_model
def vgg19_bn(**kwargs: Any) -> TDAFClassifier:
    """VGG19 with BatchNorm."""
    return _create_vgg("vgg19_bn", **kwargs)


@register_model
def tdaf_vgg19_bn(**kwargs: Any) -> TDAFClassifier:
    """TDAF-VGG19 with BatchNorm."""
    return _create_vgg("tdaf_vgg19_bn", **kwargs)


@register_model
def vgg19_bn_cifar(**kwargs: Any) -> TDAFClassifier:
    """VGG19 with BatchNorm for 32x32 (CIFAR) input."""
    return _create_vgg("vgg19_bn_cifar", **kwargs)


@register_model
def tdaf_vgg19_bn_cifar(**kwargs: Any) -> TDAFClassifier:
    """TDAF-VGG19 with BatchNorm for 32x32 (CIFAR) input."""
    return _create_vgg("tdaf_vgg19_bn_cifar", **kwargs)
