"""A classifier over a staged backbone (plain stages or R2DNS), with timm's contract."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ClassifierHead
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..layers.mfbn import FLOW_NORMS
from ..r2dns import R2DNS, StageNet, total_reduction

__all__ = ["TDAFClassifier", "feature_info", "resolve_levels"]


def resolve_levels(
    indices: int | Sequence[int] | None,
    num_stages: int,
    stem_info: Sequence[dict[str, Any]] = (),
    what: str = "out_indices",
) -> tuple[int, ...]:
    """timm's level selection, as stage indices. Levels are numbered as timm numbers a
    model's feature levels: first the ``stem_info`` levels computed inside stage 1 (a
    ResNet's stem, timm's level 0), then one level per stage. None = every stage, an int
    n = the last n levels, a sequence = those levels (negative ones count from the end).
    A stem level is an error: R2DNS returns stage outputs only."""
    num_stem = len(stem_info)
    n = num_stem + num_stages
    if indices is None:
        return tuple(range(num_stages))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 1 <= indices <= num_stages:
            raise ValueError(f"{what}: got {indices}; allowed: 1 to {num_stages} (the last n levels)")
        return tuple(range(num_stages - indices, num_stages))
    levels = list(indices)
    if not levels or any(not isinstance(i, int) or isinstance(i, bool) or not -n <= i < n for i in levels):
        raise ValueError(f"{what}: got {levels}; allowed: level indices from {-n} to {n - 1}")
    stem = [i % n for i in levels if i % n < num_stem]
    if stem:
        info = stem_info[stem[0]]
        raise ValueError(
            f"{what}: level {stem[0]} ({info.get('module')}, reduction {info.get('reduction')}) is computed inside "
            f"stage 1 and is not an output of the backbone; allowed: levels {num_stem} to {n - 1} (the stage "
            f"outputs, numbered as timm numbers them)"
        )
    return tuple(i % n - num_stem for i in levels)


class _CheckpointedForward:
    """A stage's forward under activation checkpointing (``set_grad_checkpointing``).

    The recomputation in the backward pass runs with the flow the stage ran in (R2DNS
    has moved on to the last flow by then) and without a second update of the BatchNorm
    running statistics."""

    def __init__(self, stage: nn.Module) -> None:
        self.stage = stage

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        stage = self.stage
        forward = type(stage).forward
        if not torch.is_grad_enabled():
            return forward(stage, x)
        flow_norms = [m for m in stage.modules() if isinstance(m, FLOW_NORMS)]
        flows = [m.flow for m in flow_norms]
        norms = [m for m in stage.modules() if isinstance(m, _BatchNorm)]
        calls = [0]

        def run(inp: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            if calls[0] == 1:
                return forward(stage, inp)
            saved_flows = [m.flow for m in flow_norms]
            saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                     for m in norms]
            try:
                for m, flow in zip(flow_norms, flows):
                    m.flow = flow
                for m in norms:
                    m.momentum = 0.0
                return forward(stage, inp)
            finally:
                for m, flow in zip(flow_norms, saved_flows):
                    m.flow = flow
                for m, (momentum, count) in zip(norms, saved):
                    m.momentum = momentum
                    if count is not None:
                        m.num_batches_tracked.copy_(count)

        return checkpoint(run, x, use_reentrant=False)


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
        # Feature levels computed inside the first stage (a ResNet's stem): timm numbers them first.
        self.stem_info: list[dict[str, Any]] = []
        self.grad_checkpointing = False
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

    @property
    def feature_levels(self) -> list[int]:
        """timm's level number of each stage output (``out_indices`` / ``indices`` values)."""
        return [len(self.stem_info) + i for i in range(len(self.feature_info))]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: ``(final features, [maps at indices])`` of the
        last flow, or the maps alone with ``intermediates_only``. ``indices`` are levels as
        in ``features_only`` (None = every stage output). There is no final norm
        (``norm`` changes nothing), and every flow runs whole (``stop_early`` changes nothing:
        the last flow needs all of the earlier flows' stage outputs)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt: got {output_fmt!r}; allowed: 'NCHW'")
        take = resolve_levels(indices, len(self.feature_info), self.stem_info, what="indices")
        outs = self.forward_stages(x)
        intermediates = [outs[i] for i in take]
        if intermediates_only:
            return intermediates
        if type(self).forward_features is TDAFClassifier.forward_features:
            final = outs[-1]
        else:  # a classifier whose features are not the last map (multi-scale concat)
            final = self.forward_features(x)
        return final, intermediates

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's activation checkpointing, per backbone stage (in every flow). Saves
        memory, costs a second forward of each stage in the backward pass; outputs,
        gradients and BatchNorm statistics are the same as without it."""
        self.grad_checkpointing = bool(enable)
        for stage in self.backbone.stages:
            if enable:
                stage.forward = _CheckpointedForward(stage)
            else:
                stage.__dict__.pop("forward", None)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (layer-wise lr decay, ``timm.optim``): ``stem`` is the
        first stage (it holds the stem) with ANAR g_1, and each later stage forms a block
        with the ANAR that reads its output (g_l gates stage l's output in the next flow);
        the head comes last. Stages are the finest unit, so ``coarse`` gives the same groups."""
        return dict(
            stem=r"^backbone\.(?:stages|attention)\.0\.",
            blocks=[(r"^backbone\.stages\.(\d+)", None), (r"^backbone\.attention\.(\d+)", None)],
        )

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    @property
    def in_chans(self) -> int | None:
        """Input channels the backbone expects (timm's ``in_chans``)."""
        return self.backbone.in_chans

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's ``reset_classifier``: a new classifier with ``num_classes`` outputs (0: none);
        ``global_pool`` None keeps the current pooling, ``""`` removes it (with no classifier).
        New layers are created on the model's device and dtype and take its train/eval mode."""
        ref = next(self.parameters(), None)
        device, dtype = (ref.device, ref.dtype) if ref is not None else (None, None)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.head.reset(num_classes, pool_type=global_pool)
        self.head.to(device=device, dtype=dtype)
        self.head.train(self.training)
        self.num_classes = num_classes
