"""Multi-level feature output for dense tasks (timm's ``features_only=True``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from timm.models import FeatureInfo
from torch import nn

from ..r2dns import R2DNS
from .classifier import TDAFClassifier

__all__ = ["StageFeatures", "resolve_out_indices"]


def resolve_out_indices(out_indices: int | Sequence[int] | None, num_levels: int) -> tuple[int, ...]:
    """timm's convention: None = every level, an int n = the last n levels, a sequence =
    those levels (negative indices count from the end)."""
    if out_indices is None:
        return tuple(range(num_levels))
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        if not 1 <= out_indices <= num_levels:
            raise ValueError(f"out_indices: got {out_indices}; allowed: 1 to {num_levels} (the last n levels)")
        return tuple(range(num_levels - out_indices, num_levels))
    indices = list(out_indices)
    if not indices or any(not isinstance(i, int) or not -num_levels <= i < num_levels for i in indices):
        raise ValueError(
            f"out_indices: got {indices}; allowed: level indices from {-num_levels} to {num_levels - 1}"
        )
    return tuple(i % num_levels for i in indices)


class StageFeatures(nn.Module):
    """The backbone of a staged model without its head: ``forward`` returns the last
    flow's stage maps at ``out_indices`` (C2..C5 for a ResNet), as timm's
    ``features_only=True`` models do, with ``feature_info.channels()`` /
    ``.reduction()``. Only the last flow reaches a task head (paper Fig. 2), so the
    earlier flows' maps are not returned.

    Its state dict is the classifier's ``backbone.*`` part, so a classifier checkpoint
    loads into it with ``strict=False``.
    """

    def __init__(self, model: TDAFClassifier, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(model, TDAFClassifier):
            raise ValueError(f"features_only: {type(model).__name__} is not a staged tdaf model")
        self.backbone = model.backbone
        self.out_indices = resolve_out_indices(out_indices, len(model.feature_info))
        self.feature_info = FeatureInfo(copy.deepcopy(model.feature_info), self.out_indices)
        self.pretrained_cfg = dict(model.pretrained_cfg)
        self.default_cfg = self.pretrained_cfg

    @property
    def is_tdaf(self) -> bool:
        return isinstance(self.backbone, R2DNS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.backbone(x)
        return [outs[i] for i in self.out_indices]
