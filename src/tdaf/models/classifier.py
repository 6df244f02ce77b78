"""A classifier over a staged backbone (plain stages or R2DNS), with timm's contract."""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import ClassifierHead
from torch import nn

from ..r2dns import R2DNS, StageNet, total_reduction

__all__ = ["TDAFClassifier", "feature_info"]


def feature_info(backbone: R2DNS | StageNet, prefix: str = "backbone.stages") -> list[dict[str, Any]]:
    """timm-style feature info: channels and total reduction of each stage output."""
    info = []
    for i, (c, total) in enumerate(zip(backbone.channels, total_reduction(backbone.strides, backbone.dims))):
        # timm reports one reduction, the width's; below 1 after up-sampling stages.
        r = total[-1]
        info.append(dict(num_chs=c, reduction=int(r) if r.denominator == 1 else float(r), module=f"{prefix}.{i}"))
    return info


class TDAFClassifier(nn.Module):
    """Backbone stages (R2DNS for ``tdaf_`` models, :class:`StageNet` for plain ones),
    then a head on the last flow's last stage output (paper Fig. 2: only the last flow
    reaches the task head).

    Follows timm's classifier contract: ``num_classes``, ``num_features``,
    ``feature_info``, ``forward_features``, ``forward_head(x, pre_logits)``,
    ``reset_classifier``, ``get_classifier``, ``pretrained_cfg``.
    """

    def __init__(
        self,
        backbone: R2DNS | StageNet,
        num_classes: int,
        head: nn.Module | None = None,
        num_features: int | None = None,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        pretrained_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_features = num_features if num_features is not None else backbone.channels[-1]
        self.head_hidden_size = self.num_features
        self.head = head if head is not None else ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate
        )
        self.feature_info = feature_info(backbone)
        self.pretrained_cfg: dict[str, Any] = dict(pretrained_cfg or {})
        self.default_cfg = self.pretrained_cfg

    @property
    def is_tdaf(self) -> bool:
        """True for R2DNS with attention (not for the flows-only ablation)."""
        return isinstance(self.backbone, R2DNS) and self.backbone.anar_name is not None

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage output of the last flow (C2..C5 for a ResNet)."""
        return self.backbone(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
