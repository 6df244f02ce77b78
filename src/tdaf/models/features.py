"""Multi-level feature output for dense tasks (timm's ``features_only=True``)."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from timm.models import FeatureInfo
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork

from ..r2dns import R2DNS, StageNet
from .classifier import TDAFClassifier, feature_info, resolve_levels

__all__ = ["StageFeatures", "FeatureMaps", "BackboneWithFPN", "resolve_out_indices"]


def resolve_out_indices(
    out_indices: int | Sequence[int] | None, num_levels: int, stem_info: Sequence[dict[str, Any]] = ()
) -> tuple[int, ...]:
    """The stage indices of timm's ``out_indices`` over ``num_levels`` stage outputs:
    None = every stage, an int n = the last n, a sequence = those levels, numbered as timm
    numbers the model's levels (``stem_info``: the levels computed inside stage 1, such as
    a ResNet's stem, come first; asking for one is an error)."""
    return resolve_levels(out_indices, num_levels, stem_info)


class StageFeatures(nn.Module):
    """The backbone of a staged model without its head: ``forward`` returns the last
    flow's stage maps at ``out_indices`` (C2..C5 for a ResNet), as timm's
    ``features_only=True`` models do, with ``feature_info.channels()`` /
    ``.reduction()``. Only the last flow reaches a task head (paper Fig. 2), so the
    earlier flows' maps are not returned.

    Levels are numbered as timm numbers them: for a ResNet, level 0 is the stem (timm's
    ``act1``, computed inside stage 1 here and not returned) and levels 1..4 are C2..C5,
    so ``out_indices=(1, 2, 3, 4)`` taken from timm code gives the same maps.

    Its state dict is the classifier's ``backbone.*`` part, so a classifier checkpoint
    loads into it with ``strict=False``.
    """

    def __init__(self, model: TDAFClassifier, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(model, TDAFClassifier):
            raise ValueError(f"features_only: {type(model).__name__} is not a staged tdaf model")
        self.backbone = model.backbone
        stem = list(getattr(model, "stem_info", []))
        self.stage_indices = resolve_out_indices(out_indices, len(model.feature_info), stem)
        self.out_indices = tuple(len(stem) + i for i in self.stage_indices)  # timm's level numbers
        self.feature_info = FeatureInfo(copy.deepcopy(stem + list(model.feature_info)), self.out_indices)
        self.pretrained_cfg = dict(model.pretrained_cfg)
        self.default_cfg = self.pretrained_cfg

    @property
    def is_tdaf(self) -> bool:
        return isinstance(self.backbone, R2DNS) and self.backbone.anar_name is not None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.backbone(x)
        return [outs[i] for i in self.stage_indices]


class FeatureMaps(nn.Module):
    """The last flow's stage maps as an ``OrderedDict[str, Tensor]``: the backbone
    contract of torchvision's detection models (``FeaturePyramidNetwork``, FCOS) and of
    detectron2. ``IntermediateLayerGetter`` cannot serve R2DNS, which runs its stages once
    per flow, so the maps come from the backbone's own multi-level output.

    ``model`` is a staged tdaf classifier or its backbone (R2DNS / StageNet);
    ``out_indices`` follow timm (None = every stage, n = the last n, levels numbered as
    timm numbers them: a ResNet's C2..C5 are 1..4); ``names`` default to
    ``"0", "1", ...`` (torchvision's ``return_layers`` values). ``out_channels`` lists each
    map's channels in order (``FeaturePyramidNetwork``'s ``in_channels_list``);
    ``strides`` their total reductions (below 1 after up-sampling stages);
    ``feature_info`` the selected levels' timm-style dicts. Its state dict keys are the classifier's
    ``backbone.*``.
    """

    def __init__(
        self,
        model: TDAFClassifier | R2DNS | StageNet,
        out_indices: int | Sequence[int] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, TDAFClassifier):
            info, cfg, backbone = model.feature_info, dict(model.pretrained_cfg), model.backbone
            stem = list(model.stem_info)
        elif isinstance(model, (R2DNS, StageNet)):
            info, cfg, backbone, stem = feature_info(model), {}, model, []
        else:
            raise ValueError(f"features: {type(model).__name__} is not a staged tdaf model or backbone")
        self.backbone = backbone
        self.stage_indices = resolve_out_indices(out_indices, len(info), stem)
        self.out_indices = tuple(len(stem) + i for i in self.stage_indices)  # timm's level numbers
        names = [str(i) for i in range(len(self.out_indices))] if names is None else [str(n) for n in names]
        if len(names) != len(self.out_indices) or len(set(names)) != len(names):
            raise ValueError(f"names: got {names}; need {len(self.out_indices)} distinct names, one per map")
        self.names = names
        # A plain list (timm's FeatureInfo refuses the falling reductions of up-sampling stages).
        self.feature_info: list[dict[str, Any]] = [copy.deepcopy(info[i]) for i in self.stage_indices]
        self.out_channels: list[int] = [int(info[i]["num_chs"]) for i in self.stage_indices]
        self.strides = [info[i]["reduction"] for i in self.stage_indices]
        self.pretrained_cfg = cfg
        self.default_cfg = self.pretrained_cfg

    @property
    def is_tdaf(self) -> bool:
        return isinstance(self.backbone, R2DNS) and self.backbone.anar_name is not None

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        outs = self.backbone(x)
        return OrderedDict((name, outs[i]) for name, i in zip(self.names, self.stage_indices))


class BackboneWithFPN(nn.Module):
    """:class:`FeatureMaps` followed by torchvision's ``FeaturePyramidNetwork``: the
    backbone torchvision's FCOS / RetinaNet / Faster R-CNN take (``out_channels`` is an
    int, the output is an ``OrderedDict``); torchvision's own ``BackboneWithFPN`` relies on
    ``IntermediateLayerGetter``, which cannot run R2DNS's flows (paper §4, COCO: FPN on the
    last flow's C3-C5)."""

    def __init__(self, features: FeatureMaps, out_channels: int = 256,
                 extra_blocks: ExtraFPNBlock | None = None) -> None:
        super().__init__()
        self.body = features
        self.fpn = FeaturePyramidNetwork(features.out_channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))
