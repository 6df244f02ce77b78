"""The multi-scale ablation of paper §4.5: R2DNS's flows with no attention.

The same N flows as R2DNS (flow n sees the input down-sampled N - n times and runs its
first S(n) = L - (N - n) stages, weights and BatchNorm affine shared, statistics per flow
through MFBN), but no ANAR connects them: R2DNS with ``anar=None``, whose flows are
independent. Each flow's last map is pooled and the pooled features of all flows are
concatenated for the classifier. The paper reports this setting on ResNet-50 (3 flows)
1.1 points below TDAF with ANAR-3, which shows that the gain comes from the top-down
attention, not from the multiple scales.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from ..r2dns import R2DNS, StageNet
from . import resnet
from ._builder import build_model, reject_unknown, take_tdaf_kwargs
from ._registry import create_model, register_model
from .classifier import TDAFClassifier

__all__ = ["MultiScaleConcatClassifier"]


class MultiScaleConcatClassifier(TDAFClassifier):
    """Classifier on the concatenated last maps of all flows (paper §4.5).

    ``forward_features`` returns the flows' last maps concatenated along channels; an
    earlier flow's map is resized to the last flow's size when rounding makes them differ
    (at sizes that halve evenly they are equal, so global pooling of the concatenation is
    exactly the concatenation of each flow's pooled features).
    """

    backbone: R2DNS

    def __init__(self, backbone: R2DNS | StageNet, num_classes: int, num_features: int | None = None,
                 **kwargs: Any) -> None:
        if not isinstance(backbone, R2DNS):
            raise ValueError("multi-scale concat: needs an R2DNS backbone (flows without attention)")
        num_features = sum(backbone.flow_channels()) if num_features is None else num_features
        super().__init__(backbone, num_classes, num_features=num_features, **kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        finals = [outs[-1] for outs in self.backbone.forward_flows(x)]
        size = finals[-1].shape[2:]
        mode = "bilinear" if self.backbone.dims == 2 else "trilinear"
        # An identity at equal sizes; always called so traced graphs stay shape-generic.
        resized = [F.interpolate(f, size=size, mode=mode, align_corners=False) for f in finals[:-1]]
        return torch.cat([*resized, finals[-1]], dim=1)


def _cfg(base: str) -> dict[str, Any]:
    cfg = {k: v for k, v in resnet.default_cfgs[base].items() if k not in ("tdaf_variant", "baseline")}
    cfg.update(family="msconcat", tdaf=False, tdaf_args=("flows", "downsample"), baseline=base)
    return cfg


# ResNet-50 is the paper's setting; the CIFAR and ResNet-18 ones are for quick runs.
default_cfgs: dict[str, dict[str, Any]] = {
    "msconcat_resnet50": _cfg("resnet50"),
    "msconcat_resnet50_cifar": _cfg("resnet50_cifar"),
    "msconcat_resnet18_cifar": _cfg("resnet18_cifar"),
}


def _create_msconcat(
    variant: str,
    *,
    num_classes: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    global_pool: str = "avg",
    in_chans: int = 3,
    **kwargs: Any,
) -> MultiScaleConcatClassifier:
    cfg = default_cfgs[variant]
    tdaf_kwargs = take_tdaf_kwargs(variant, cfg, kwargs)  # flows and downsample only
    reject_unknown(variant, kwargs)
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    # The plain model supplies the stages (and loads a pretrained backbone file).
    plain = create_model(cfg["baseline"], num_classes=num_classes, pretrained=pretrained, in_chans=in_chans)
    model = build_model(
        variant, list(plain.backbone.stages), plain.backbone.channels, plain.backbone.strides, cfg, tdaf=True,
        num_classes=num_classes, drop_rate=drop_rate, global_pool=global_pool, in_chans=plain.backbone.in_chans,
        model_cls=MultiScaleConcatClassifier, stem_info=plain.stem_info, anar=None, **tdaf_kwargs,
    )
    return model  # type: ignore[return-value]


@register_model
def msconcat_resnet50(**kwargs: Any) -> MultiScaleConcatClassifier:
    """Multi-scale concat ablation (paper §4.5) on ResNet-50: flows without attention."""
    return _create_msconcat("msconcat_resnet50", **kwargs)


@register_model
def msconcat_resnet50_cifar(**kwargs: Any) -> MultiScaleConcatClassifier:
    """Multi-scale concat ablation (paper §4.5) on CIFAR ResNet-50: flows without attention."""
    return _create_msconcat("msconcat_resnet50_cifar", **kwargs)


@register_model
def msconcat_resnet18_cifar(**kwargs: Any) -> MultiScaleConcatClassifier:
    """Multi-scale concat ablation (paper §4.5) on CIFAR ResNet-18: flows without attention."""
    return _create_msconcat("msconcat_resnet18_cifar", **kwargs)
