"""FCOS (Tian et al. 2019) on a plain or TDAF ResNet, paper §4.2 and Tab. 4.

torchvision's own ``FCOS`` (losses, centre sampling, NMS, resizing) over torchvision's
``FeaturePyramidNetwork`` with ``LastLevelP6P7`` (P3-P7), fed with the last flow's
C3-C5 (:class:`tdaf.models.BackboneWithFPN`). Only the backbone differs from
``torchvision.models.detection.fcos_resnet50_fpn``: its stages run as R2DNS flows.

Normalisation follows torchvision's FCOS recipe: with backbone weights the stage
BatchNorms are frozen (``FrozenBatchNorm2d``; per flow ``FrozenMultiFlowBatchNorm`` in a
TDAF model, each flow keeping its own statistics) and the stem and ``layer1`` do not
train (``trainable_layers=3``); without weights everything trains with (MF)BN. The
ANARs are new layers with no statistics to keep: their MFBNs always train.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from ..engine.checkpoint import CHECKPOINT_FORMAT
from ..io.files import load_state_dict_file, safe_load
from ..layers.mfbn import freeze_mfbn
from ..models import BackboneWithFPN, FeatureMaps, create_model, register_model
from ..models._builder import reject_unknown, take_tdaf_kwargs, with_attention_init
from ..r2dns import TDAF_ARCH_KEYS, R2DNS, StageNet

__all__ = ["TDAFFCOS", "build_fcos", "torchvision_fcos_state_dict", "backbone_of", "TASK", "COCO_NUM_CLASSES"]

log = logging.getLogger("tdaf.detection")

TASK = "detection"
COCO_NUM_CLASSES = 91  # torchvision's convention: labels are COCO category ids (1..90)
# torchvision's names of the ResNet parts, stem first, and where they live in a staged backbone.
_RESNET_PARTS = {
    "conv1": ("stages.0.conv1.", "stages.0.bn1."),
    "layer1": ("stages.0.layer1.",),
    "layer2": ("stages.1.",),
    "layer3": ("stages.2.",),
    "layer4": ("stages.3.",),
}


# The arguments of torchvision's FCOS that pass through (score_thresh, nms_thresh, ...) and
# of the GeneralizedRCNNTransform it builds (size_divisible, fixed_size); the rest are ours.
_FCOS_ARGS = tuple(dict.fromkeys(
    p for cls in (FCOS, GeneralizedRCNNTransform) for p in inspect.signature(cls.__init__).parameters
    if p not in ("self", "backbone", "num_classes", "min_size", "max_size", "kwargs")
))


# The box branch of torchvision's FCOS is relu(conv(x)) with the conv's bias at 0: every box
# starts as a point and about half of the outputs start below zero, where the ReLU passes no
# gradient. On the digit-scenes quick run (AdamW from scratch) one of the four sides (l, t, r, b)
# of TDAF-FCOS sometimes went below zero at every location within the first 10 steps and never
# came back: its box loss stayed at 0.6-1.0 and AP at 0-11 (5 of 15 TDAF runs, 0 of 14 plain).
# Starting the bias at 1 puts every side one anchor size from its location (the box FCOS's
# original exp(x) regression starts from) with every output alive.
BOX_BIAS_INIT = 1.0


def _cfg(backbone: str, tdaf: bool, paper: bool = True, **kwargs: Any) -> dict[str, Any]:
    return dict(task=TASK, backbone=backbone, tdaf=tdaf, paper=paper, input_size=(3, 800, 1333),
                num_classes=COCO_NUM_CLASSES, family="fcos", **kwargs)


default_cfgs: dict[str, dict[str, Any]] = {
    "fcos_resnet50_fpn": _cfg("resnet50", False, tdaf_variant="tdaf_fcos_resnet50_fpn"),
    "tdaf_fcos_resnet50_fpn": _cfg("tdaf_resnet50", True, baseline="fcos_resnet50_fpn"),
    "fcos_resnet101_fpn": _cfg("resnet101", False, tdaf_variant="tdaf_fcos_resnet101_fpn"),
    "tdaf_fcos_resnet101_fpn": _cfg("tdaf_resnet101", True, baseline="fcos_resnet101_fpn"),
    # Ours, not the paper's: small enough for a CPU quick run.
    "fcos_resnet18_fpn": _cfg("resnet18", False, paper=False, tdaf_variant="tdaf_fcos_resnet18_fpn"),
    "tdaf_fcos_resnet18_fpn": _cfg("tdaf_resnet18", True, paper=False, baseline="fcos_resnet18_fpn"),
}


class TDAFFCOS(FCOS):
    """torchvision's ``FCOS`` whose ``backbone.body`` is a :class:`tdaf.models.FeatureMaps`
    (a plain ResNet, or R2DNS flows over it); ``pretrained_cfg`` records the architecture."""

    pretrained_cfg: dict[str, Any]

    @property
    def r2dns(self) -> R2DNS | None:
        b = self.backbone.body.backbone
        return b if isinstance(b, R2DNS) else None

    @property
    def is_tdaf(self) -> bool:
        r = self.r2dns
        return r is not None and r.anar_name is not None


def backbone_of(model: nn.Module) -> R2DNS | StageNet:
    """The staged backbone (R2DNS or StageNet) inside an FCOS model of this package."""
    try:
        return model.backbone.body.backbone  # type: ignore[union-attr,return-value]
    except AttributeError:
        raise ValueError(f"{type(model).__name__} is not an FCOS model of tdaf.detection") from None


def _freeze_bn(module: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` replaced by torchvision's ``FrozenBatchNorm2d`` with its statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = _freeze_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _freeze_layers(backbone: R2DNS | StageNet, trainable_layers: int) -> None:
    """torchvision's ``trainable_backbone_layers``: only the last ``trainable_layers`` of
    layer4, layer3, layer2, layer1, conv1 train (the ANARs always do)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers: got {trainable_layers}; allowed: 0 to 5 (torchvision's range)")
    train = [p for part in list(_RESNET_PARTS)[::-1][:trainable_layers] for p in _RESNET_PARTS[part]]
    for name, param in backbone.named_parameters():
        if name.startswith("stages.") and not name.startswith(tuple(train)):
            param.requires_grad_(False)


def _load_backbone(features: FeatureMaps, path: str | os.PathLike[str], model_name: str) -> None:
    """Initialise ``features`` from a tdaf classification checkpoint (plain or TDAF); a
    torchvision/timm state dict is loaded by the classifier builder before this."""
    obj = safe_load(path, "backbone_weights")
    state = {k: v for k, v in obj["state_dict"].items() if k.startswith("backbone.")}
    own = features.state_dict()
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.dim() == own[k].dim() and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    stage_missing = [k for k in missing if not k.startswith("backbone.attention.")]
    src = f"{obj['model']['name']} {obj['model'].get('kwargs', {})}"
    if unexpected or shapes or stage_missing:
        problems = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                    for label, keys in (("unexpected", unexpected), ("shape (file vs model)", shapes),
                                        ("missing", stage_missing)) if keys]
        raise ValueError(f"backbone_weights: {path} holds {src}, which does not fit the backbone of {model_name} "
                         f"({'; '.join(problems)}); a TDAF checkpoint needs the same flows and ANAR")
    features.load_state_dict(state, strict=False)
    if missing:
        log.info("backbone_weights: %s (%s) has no ANAR weights; the %d ANAR tensors start from scratch",
                 path, src, len(missing))


def build_fcos(
    model_name: str,
    *,
    num_classes: int | None = None,
    backbone_weights: str | os.PathLike[str] | None = None,
    frozen_bn: bool | None = None,
    trainable_layers: int | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    box_bias_init: float = BOX_BIAS_INIT,
    **kwargs: Any,
) -> TDAFFCOS:
    """The FCOS model ``model_name`` (see :data:`default_cfgs`).

    Args:
        num_classes: outputs of the classification branch; labels are the data set's
            category ids (torchvision's COCO convention: 91).
        backbone_weights: (``pretrained`` in ``tdaf.create_model``) a local file: a tdaf classification checkpoint of the same
            backbone (plain or TDAF), or a torchvision/timm ResNet state dict.
        frozen_bn: freeze the stage BatchNorms (default: when ``backbone_weights`` is given,
            as torchvision's FCOS does).
        trainable_layers: torchvision's ``trainable_backbone_layers`` (default 3 with
            backbone weights, 5 without).
        min_size, max_size: torchvision's resizing; a sequence of ``min_size`` values is
            multi-scale training (one drawn per image; evaluation uses the last).
        box_bias_init: the starting bias of the box branch's last conv (default 1: every side
            of every box starts one anchor size from its location; torchvision starts at 0,
            a box of zero size, see :data:`BOX_BIAS_INIT`). Trained weights replace it.
        kwargs: ``flows``, ``anar``, ``eta``, ``downsample`` (TDAF models), and any other
            argument of ``torchvision.models.detection.FCOS`` (score_thresh, nms_thresh, ...).
    """
    cfg = default_cfgs[model_name]
    if "pretrained" in kwargs:  # tdaf.create_model's name for a local weights file
        if backbone_weights is not None:
            raise ValueError("pretrained, backbone_weights: give one of them (both name the backbone's weights)")
        backbone_weights = kwargs.pop("pretrained")
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes: got {num_classes!r}; allowed: an integer >= 1")
    if (isinstance(box_bias_init, bool) or not isinstance(box_bias_init, (int, float))
            or not math.isfinite(box_bias_init)):
        raise ValueError(f"box_bias_init: got {box_bias_init!r}; allowed: a finite number (default {BOX_BIAS_INIT})")
    tdaf_kwargs = take_tdaf_kwargs(model_name, cfg, kwargs)
    # torchvision's FCOS passes unknown arguments on to its transform, which drops them: check here.
    reject_unknown(model_name, kwargs, _FCOS_ARGS)
    trained = backbone_weights is not None
    frozen_bn = trained if frozen_bn is None else bool(frozen_bn)
    trainable_layers = (3 if trained else 5) if trainable_layers is None else int(trainable_layers)
    ckpt = None
    if trained:
        obj = safe_load(backbone_weights, "backbone_weights")  # type: ignore[arg-type]
        ckpt = obj if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT else None
        if ckpt is None:
            load_state_dict_file(backbone_weights, "backbone_weights")  # a clear error for anything else
    if cfg["tdaf"] and trained:  # a trained backbone: "auto" starts attention as the identity
        tdaf_kwargs = with_attention_init(tdaf_kwargs, True)
    classifier = create_model(cfg["backbone"], num_classes=0,
                              pretrained=None if ckpt is not None or not trained else backbone_weights,
                              **tdaf_kwargs)
    features = FeatureMaps(classifier, out_indices=(2, 3, 4))  # C3, C4, C5 of the last flow (timm's levels)
    if ckpt is not None:
        _load_backbone(features, backbone_weights, model_name)  # type: ignore[arg-type]
    stages = features.backbone
    if frozen_bn:
        if isinstance(stages, R2DNS):
            freeze_mfbn(stages.stages)
        else:
            _freeze_bn(stages)
    _freeze_layers(stages, trainable_layers)
    backbone = BackboneWithFPN(features, 256, extra_blocks=LastLevelP6P7(256, 256))
    sizes = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
    if not sizes or any(s < 1 for s in sizes) or max_size < max(sizes):
        raise ValueError(f"min_size, max_size: got {min_size!r}, {max_size!r}; allowed: sizes >= 1 with "
                         f"max_size >= every min_size")
    model = TDAFFCOS(backbone, num_classes, min_size=sizes, max_size=max_size, **kwargs)
    nn.init.constant_(model.head.regression_head.bbox_reg.bias, float(box_bias_init))
    tdaf_settings = {k: v for k, v in classifier.pretrained_cfg.items() if k in TDAF_ARCH_KEYS}
    model.pretrained_cfg = dict(cfg, num_classes=num_classes, frozen_bn=frozen_bn, trainable_layers=trainable_layers,
                                min_size=list(sizes), max_size=max_size, architecture=model_name, **tdaf_settings)
    return model


def torchvision_fcos_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of torchvision's ``fcos_resnet50_fpn`` in the layout of this package's
    FCOS models (``backbone.body.conv1`` -> ``backbone.body.backbone.stages.0.conv1``, ...);
    the FPN and the head keep their names. Load it into ``fcos_resnet50_fpn`` (or a TDAF
    model with ``strict=False``: its ANARs are new)."""
    prefixes = {"conv1.": "stages.0.conv1.", "bn1.": "stages.0.bn1.", "layer1.": "stages.0.layer1.",
                "layer2.": "stages.1.", "layer3.": "stages.2.", "layer4.": "stages.3."}
    out = {}
    for k, v in state.items():
        if k.startswith("backbone.body."):
            rest = k[len("backbone.body."):]
            for old, new in prefixes.items():
                if rest.startswith(old):
                    k = "backbone.body.backbone." + new + rest[len(old):]
                    break
            else:
                raise ValueError(f"state dict: {k!r} is not a part of a torchvision FCOS ResNet backbone")
        out[k] = v
    return out


@register_model
def fcos_resnet50_fpn(**kwargs: Any) -> TDAFFCOS:
    """FCOS ResNet-50-FPN (torchvision's ``fcos_resnet50_fpn``; paper Tab. 4 baseline)."""
    return build_fcos("fcos_resnet50_fpn", **kwargs)


@register_model
def tdaf_fcos_resnet50_fpn(**kwargs: Any) -> TDAFFCOS:
    """FCOS on TDAF-ResNet-50 (paper Tab. 4: ANAR-3 / ANAR-5, 3 or 4 flows)."""
    return build_fcos("tdaf_fcos_resnet50_fpn", **kwargs)


@register_model
def fcos_resnet101_fpn(**kwargs: Any) -> TDAFFCOS:
    """FCOS ResNet-101-FPN (paper Tab. 4 baseline)."""
    return build_fcos("fcos_resnet101_fpn", **kwargs)


@register_model
def tdaf_fcos_resnet101_fpn(**kwargs: Any) -> TDAFFCOS:
    """FCOS on TDAF-ResNet-101 (paper Tab. 4)."""
    return build_fcos("tdaf_fcos_resnet101_fpn", **kwargs)


@register_model
def fcos_resnet18_fpn(**kwargs: Any) -> TDAFFCOS:
    """FCOS ResNet-18-FPN: ours, not the paper's (the CPU quick run)."""
    return build_fcos("fcos_resnet18_fpn", **kwargs)


@register_model
def tdaf_fcos_resnet18_fpn(**kwargs: Any) -> TDAFFCOS:
    """FCOS on TDAF-ResNet-18: ours, not the paper's (the CPU quick run)."""
    return build_fcos("tdaf_fcos_resnet18_fpn", **kwargs)
