"""3D-ResNets (Hara, Kataoka and Satoh 2018) and their TDAF forms, paper §4.4 and Tab. 6.

Hara's 3D-ResNet: a 7x7x7 stem convolution with stride (1, 2, 2), a 3x3x3 max-pool with
stride 2 over T, H and W, then four layers of 3x3x3 (basic) or 1x1x1-3x3x3-1x1x1
(bottleneck) blocks, with stride 2 over T, H and W at layers 2-4, and shortcut type B
(a 1x1x1 convolution + BN where the shape changes). The blocks and convolution builder are
torchvision's (``torchvision.models.video.resnet``). 3D-ResNet-50 with 400 classes has
47,018,576 parameters, the paper's 47.019M.

Stages (L = 4): stem + layer1 (stride 2 x 4 x 4), layer2, layer3, layer4 (2 x 2 x 2 each).
TDAF forms (``tdaf_r3d_*``) wrap them in R2DNS with ``dims=3``: 3D ANAR-5 (the paper's
setting for video), 3 flows, down-sampling between flows over T, H and W.

**Inflation** (I3D, Carreira and Zisserman 2017): ``pretrained`` is a *2D* ImageNet ResNet
state dict (torchvision or timm layout); each k x k kernel becomes k x k x k, repeated
along time and divided by k (a transposed one by k / stride), and BatchNorm statistics and
affine parameters are copied, so a clip of one repeated frame gives the 2D network's
features on the frames whose temporal receptive field never meets the zero padding (with
Hara's temporal strides, no frame of C2-C5 for a 16-frame clip: docs/video.md). A state
dict that is already 3D loads as it is; a 2D tdaf checkpoint, TDAF included (ANARs,
per-flow statistics), inflates through ``tdaf train --init-from``.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Bottleneck, Conv3DSimple

from ..io.files import load_state_dict_file
from ..models import TDAFClassifier, register_model
from ..models._pretrained import PretrainedLayoutError
from ..models._builder import paired_cfgs, reject_unknown, take_tdaf_kwargs, tdaf_settings, with_attention_init
from ..r2dns import R2DNS, StageNet

__all__ = [
    "VideoHead", "VideoClassifier", "Hara3DResNet", "inflate_state_dict", "inflate_kernel", "VIDEO_TDAF_DEFAULTS",
    "KINETICS_MEAN", "KINETICS_STD",
]

TASK = "video"
# The paper's TDAF setting for video (§4.4): 3D ANAR-5, 3 flows.
VIDEO_TDAF_DEFAULTS: dict[str, Any] = dict(flows=3, anar="anar5")
# ImageNet statistics: the inflated 2D weights expect them (Hara's Kinetics means are close).
KINETICS_MEAN, KINETICS_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def _cfg(arch: str, **kwargs: Any) -> dict[str, Any]:
    cfg = dict(
        input_size=(3, 16, 112, 112), mean=KINETICS_MEAN, std=KINETICS_STD, num_classes=400,
        classifier="head.fc", first_conv="backbone.stages.0.conv1", family="r3d", arch=arch, task=TASK,
    )
    cfg.update(kwargs)
    return cfg


default_cfgs: dict[str, dict[str, Any]] = {
    **paired_cfgs("r3d_resnet10", _cfg("resnet10")),
    **paired_cfgs("r3d_resnet10_w16", _cfg("resnet10", input_size=(3, 16, 32, 32), base_width=16)),
    **paired_cfgs("r3d_resnet18", _cfg("resnet18")),
    **paired_cfgs("r3d_resnet34", _cfg("resnet34")),
    **paired_cfgs("r3d_resnet50", _cfg("resnet50")),
    **paired_cfgs("r3d_resnet101", _cfg("resnet101")),
}
for _name, _c in default_cfgs.items():
    if _c["tdaf"]:
        _c.update(VIDEO_TDAF_DEFAULTS)


class VideoHead(nn.Module):
    """Global average pooling over T, H and W, dropout, then the linear classifier ``fc``."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_features = num_features
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type not in (None, "avg"):
            raise ValueError(f"global_pool: got {pool_type!r}; allowed for video models: 'avg'")
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class VideoClassifier(TDAFClassifier):
    """:class:`TDAFClassifier` for clips ``(B, C, T, H, W)``: the input is checked up front
    and a wrong layout or a clip below the model's minimum ``T x H x W`` is a ValueError
    that states the minimum."""

    def check_clip(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        name = self.pretrained_cfg.get("architecture", "this model")
        need = self.backbone.min_input_size()
        channels = self.backbone.in_chans
        if x.dim() != 5:
            raise ValueError(f"input: {name} takes clips (B, {channels}, T, H, W), got a {x.dim()}-D tensor of "
                             f"shape {tuple(x.shape)}; the minimum T x H x W is {'x'.join(map(str, need))}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"input: {name} takes clips (B, {channels}, T, H, W) (channels second), got shape "
                             f"{tuple(x.shape)}")
        size = tuple(x.shape[2:])
        if any(s < m for s, m in zip(size, need)):
            flows = getattr(self.backbone, "flows", 1)
            raise ValueError(f"input: a clip of T x H x W = {'x'.join(map(str, size))} is too small for {name} "
                             f"({flows} flow{'s' if flows > 1 else ''}); the minimum is {'x'.join(map(str, need))}")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_clip(x)
        return self.backbone(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


class _Stem(nn.Sequential):
    """Hara's stem: 7x7x7 conv, stride (1, 2, 2); BN; ReLU; 3x3x3 max-pool, stride 2."""

    def __init__(self, width: int) -> None:
        super().__init__(OrderedDict(
            conv1=nn.Conv3d(3, width, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False),
            bn1=nn.BatchNorm3d(width),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
        ))


class Hara3DResNet(nn.Module):
    """The plain 3D-ResNet as named parts (``stem``, ``layer1..4``, ``fc``), built from
    torchvision's video blocks; ``base_width`` 64 is Hara's (16 gives the small models of
    the quick run)."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], num_classes: int = 400,
                 base_width: int = 64) -> None:
        super().__init__()
        self.inplanes = base_width
        self.stem = _Stem(base_width)
        self.layer1 = self._make_layer(block, base_width, layers[0], 1)
        self.layer2 = self._make_layer(block, base_width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, base_width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, base_width * 8, layers[3], 2)
        self.num_features = base_width * 8 * block.expansion
        self.fc = nn.Linear(self.num_features, max(num_classes, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:  # shortcut type B
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, Conv3DSimple, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, Conv3DSimple) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> tuple[list[nn.Module], list[int], list[tuple[int, int, int] | int]]:
        stem = nn.Sequential(OrderedDict(**dict(self.stem.named_children()), layer1=self.layer1))
        w = self.num_features // 8
        return [stem, self.layer2, self.layer3, self.layer4], [w, w * 2, w * 4, w * 8], [(2, 4, 4), 2, 2, 2]


# 2D ResNet key -> 3D key. torchvision's video blocks keep each conv with its BN in a
# Sequential (conv1.0 / conv1.1), the 2D ones side by side: torchvision/timm names
# (layer1.0.conv1 -> :class:`Hara3DResNet`'s layer1.0.conv1.0) and tdaf's own
# (backbone.stages.1.0.bn2 -> backbone.stages.1.0.conv2.1) alike. Applied only to keys the
# 3D model does not have as they are (its stem keeps conv1 / bn1).
_RENAMES = (
    (re.compile(r"^conv1\.weight$"), "stem.conv1.weight"),
    (re.compile(r"^bn1\.(.*)$"), r"stem.bn1.\1"),
    (re.compile(r"^((?:.*\.)?\d+)\.conv(\d)\.weight$"), r"\1.conv\2.0.weight"),
    (re.compile(r"^((?:.*\.)?\d+)\.bn(\d)\.(.*)$"), r"\1.conv\2.1.\3"),
)


def _rename_2d(key: str) -> str:
    for pattern, repl in _RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def inflate_kernel(weight: torch.Tensor, time: int, stride: int = 1, transposed: bool = False) -> torch.Tensor:
    """A 2D kernel ``(A, B, k, k)`` as a 3D one ``(A, B, time, k, k)`` such that a clip
    constant in time gives the 2D response on every frame the temporal padding does not
    reach (I3D): repeated ``time`` times and divided by the number of taps that meet each
    output frame. A convolution sums all ``time`` taps: divide by ``time``. A transposed
    convolution with temporal stride ``s`` puts input frame ``i`` at output frames
    ``s * i - padding + j`` (``j`` = 0..time-1), so output frame ``o`` receives the taps ``j``
    with ``j = o + padding (mod s)``: ``time / s`` of them when ``s`` divides ``time`` (2 for
    ANAR's 4x4 stride-2 deconvolution, not 4): divide by ``time / s``."""
    if weight.dim() != 4:
        raise ValueError(f"weight: got a {weight.dim()}-D tensor; allowed: a 2D kernel (4-D)")
    taps = time
    if transposed:
        if time % stride:
            raise ValueError(f"a transposed kernel of {time} frames with temporal stride {stride}: frames would "
                             f"receive {time // stride} or {time // stride + 1} taps, no inflation keeps a "
                             f"constant clip constant")
        taps = time // stride
    return weight.unsqueeze(2).repeat(1, 1, time, 1, 1) / taps


def inflate_state_dict(state: dict[str, torch.Tensor],
                       target: dict[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
    """A 2D state dict as the state dict of the 3D model ``target`` (I3D inflation): every
    ``k x k`` kernel becomes ``k x k x k`` by :func:`inflate_kernel` (repeated along time and
    divided so that a constant-in-time clip gives the 2D responses away from the temporal
    borders), BatchNorm parameters and statistics (per-flow MFBN statistics ``(flows, C)``
    included) and ``fc`` are copied. Works on a plain 2D ResNet in torchvision/timm names
    into :class:`Hara3DResNet`, and on a tdaf checkpoint's state dict (plain or TDAF, ANARs
    included) into a tdaf video model. Keys already 3D pass through unchanged.

    ``target`` is the 3D model, or its state dict (then a transposed convolution cannot be
    told from a convolution, and is divided as one: give the model when it has any)."""
    modules = dict(target.named_modules()) if isinstance(target, nn.Module) else {}
    own = target.state_dict() if isinstance(target, nn.Module) else target
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key if key in own else _rename_2d(key)
        if new in own and value.dim() == 4 and own[new].dim() == 5:
            owner = modules.get(new.rpartition(".")[0])
            transposed = isinstance(owner, nn.ConvTranspose3d)
            value = inflate_kernel(value, own[new].shape[2], owner.stride[0] if transposed else 1, transposed)
        out[new] = value
    return out


def _load_pretrained(net: Hara3DResNet, path: str | os.PathLike[str], variant: str) -> None:
    state = load_state_dict_file(path, "pretrained")
    own = net.state_dict()
    state = inflate_state_dict(state, own)
    if "fc.weight" in state and state["fc.weight"].shape != own["fc.weight"].shape:  # another class count
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in own if k not in state and not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = "; ".join(f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                             for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                ("shape mismatches (inflated file vs model)", shapes)) if keys)
        raise PretrainedLayoutError(f"pretrained: {path} does not fit {variant} (expected a 2D ImageNet "
                         f"{default_cfgs[variant]['arch']} state dict in torchvision or timm layout, to be inflated "
                         f"to 3D): {problems}")
    net.load_state_dict(state, strict=False)


def _create_r3d(
    variant: str,
    block: type[BasicBlock | Bottleneck],
    layers: Sequence[int],
    *,
    num_classes: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> VideoClassifier:
    cfg = default_cfgs[variant]
    tdaf_kwargs = take_tdaf_kwargs(variant, cfg, kwargs)
    reject_unknown(variant, kwargs)
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    net = Hara3DResNet(block, layers, num_classes, base_width=cfg.get("base_width", 64))
    if pretrained is not None:
        _load_pretrained(net, pretrained, variant)
    stages, channels, strides = net.stages()
    if cfg["tdaf"]:
        settings = with_attention_init({**VIDEO_TDAF_DEFAULTS, **tdaf_kwargs}, pretrained is not None)
        backbone: R2DNS | StageNet = R2DNS(stages, channels, strides, dims=3, **settings)
    else:
        backbone = StageNet(stages, channels, strides, dims=3)
    head = VideoHead(net.num_features, num_classes, drop_rate)
    if num_classes > 0:
        head.fc = net.fc  # keeps pretrained classifier weights when the class count matches
    pretrained_cfg = dict(cfg, **tdaf_settings(backbone), architecture=variant)
    return VideoClassifier(backbone, num_classes, head=head, num_features=net.num_features,
                           pretrained_cfg=pretrained_cfg)


@register_model
def r3d_resnet10(**kwargs: Any) -> VideoClassifier:
    """3D-ResNet-10 (Hara et al. 2018)."""
    return _create_r3d("r3d_resnet10", BasicBlock, (1, 1, 1, 1), **kwargs)


@register_model
def tdaf_r3d_resnet10(**kwargs: Any) -> VideoClassifier:
    """TDAF 3D-ResNet-10 (3D ANAR-5, 3 flows by default)."""
    return _create_r3d("tdaf_r3d_resnet10", BasicBlock, (1, 1, 1, 1), **kwargs)


@register_model
def r3d_resnet10_w16(**kwargs: Any) -> VideoClassifier:
    """3D-ResNet-10 at a quarter width (16-32-64-128 channels): the CPU quick-run model."""
    return _create_r3d("r3d_resnet10_w16", BasicBlock, (1, 1, 1, 1), **kwargs)


@register_model
def tdaf_r3d_resnet10_w16(**kwargs: Any) -> VideoClassifier:
    """TDAF 3D-ResNet-10 at a quarter width: the CPU quick-run model."""
    return _create_r3d("tdaf_r3d_resnet10_w16", BasicBlock, (1, 1, 1, 1), **kwargs)


@register_model
def r3d_resnet18(**kwargs: Any) -> VideoClassifier:
    """3D-ResNet-18 (Hara et al. 2018)."""
    return _create_r3d("r3d_resnet18", BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model
def tdaf_r3d_resnet18(**kwargs: Any) -> VideoClassifier:
    """TDAF 3D-ResNet-18 (3D ANAR-5, 3 flows by default)."""
    return _create_r3d("tdaf_r3d_resnet18", BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model
def r3d_resnet34(**kwargs: Any) -> VideoClassifier:
    """3D-ResNet-34 (Hara et al. 2018)."""
    return _create_r3d("r3d_resnet34", BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model
def tdaf_r3d_resnet34(**kwargs: Any) -> VideoClassifier:
    """TDAF 3D-ResNet-34 (3D ANAR-5, 3 flows by default)."""
    return _create_r3d("tdaf_r3d_resnet34", BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model
def r3d_resnet50(**kwargs: Any) -> VideoClassifier:
    """3D-ResNet-50 (Hara et al. 2018), paper Tab. 6 baseline."""
    return _create_r3d("r3d_resnet50", Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model
def tdaf_r3d_resnet50(**kwargs: Any) -> VideoClassifier:
    """TDAF 3D-ResNet-50, paper Tab. 6 (3D ANAR-5, 3 flows by default)."""
    return _create_r3d("tdaf_r3d_resnet50", Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model
def r3d_resnet101(**kwargs: Any) -> VideoClassifier:
    """3D-ResNet-101 (Hara et al. 2018), paper Tab. 6 baseline."""
    return _create_r3d("r3d_resnet101", Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model
def tdaf_r3d_resnet101(**kwargs: Any) -> VideoClassifier:
    """TDAF 3D-ResNet-101, paper Tab. 6 (3D ANAR-5, 3 flows by default)."""
    return _create_r3d("tdaf_r3d_resnet101", Bottleneck, (3, 4, 23, 3), **kwargs)
