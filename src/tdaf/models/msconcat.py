"""The multi-scale ablation of paper §4.5: R2DNS's flows with no attention.

The same N flows as R2DNS (flow n sees the input down-sampled N - n times and runs its
first S(n) = L - (N - n) stages, weights and BatchNorm affine shared, statistics per flow
through MFBN), but no ANAR connects them: the flows are independent. Each flow's last
map is pooled and the pooled features of all flows are concatenated for the classifier.
The paper reports this setting on ResNet-50 (3 flows) 1.1 points below TDAF with ANAR-3,
which shows that the gain comes from the top-down attention, not from the multiple scales.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.downsample import Downsample
from ..layers.mfbn import convert_to_mfbn, mfbn_modules, set_flow
from ..r2dns import Stride, check_input, flow_inputs, min_input_size, validate_flows, validate_stages
from ._registry import create_model, model_cfg, register_model
from .classifier import TDAFClassifier

__all__ = ["MultiScaleConcat", "MultiScaleConcatClassifier"]

# torch.fx.wrap acts on the calling module's globals: make the input check a graph leaf here too.
torch.fx.wrap("check_input")


class MultiScaleConcat(nn.Module):
    """N independent flows over shared stages (R2DNS without ANAR, paper §4.5).

    ``forward`` returns the last flow's stage outputs (like R2DNS); ``forward_flows``
    returns every flow's stage outputs, flow 1 first.
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        channels: Sequence[int],
        strides: Sequence[Stride],
        flows: int = 3,
        downsample: str = "avg",
        dims: int = 2,
        in_chans: int | None = 3,
    ) -> None:
        super().__init__()
        validate_stages(stages, channels, strides)
        validate_flows(flows, len(stages))
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.strides = list(strides)
        self.flows = flows
        self.dims = dims
        self.in_chans = in_chans
        self.down = Downsample(downsample, dims)
        convert_to_mfbn(self, flows)
        self._mfbn = mfbn_modules(self)

    def extra_repr(self) -> str:
        return f"flows={self.flows}, attention=None"

    def stages_in_flow(self, n: int) -> int:
        """S(n) = L - (N - n), Eq. 1 (n is 1-based)."""
        return len(self.stages) - (self.flows - n)

    def flow_channels(self) -> list[int]:
        """Channels of each flow's last map, flow 1 first."""
        return [self.channels[self.stages_in_flow(n) - 1] for n in range(1, self.flows + 1)]

    def min_input_size(self) -> tuple[int, ...]:
        return min_input_size(self.strides, self.flows, self.dims)

    def forward_flows(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        check_input(x, self.in_chans, self.min_input_size(), self.dims)
        inputs = flow_inputs(x, self.down, self.flows)
        result = []
        for n in range(1, self.flows + 1):
            set_flow(self._mfbn, n - 1)
            y = inputs[n - 1]
            outputs = []
            for stage in list(self.stages)[: self.stages_in_flow(n)]:
                y = stage(y)
                outputs.append(y)
            result.append(outputs)
        set_flow(self._mfbn, self.flows - 1)
        return result

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_flows(x)[-1]


class MultiScaleConcatClassifier(TDAFClassifier):
    """Classifier on the concatenated last maps of all flows (paper §4.5).

    ``forward_features`` returns the flows' last maps concatenated along channels; an
    earlier flow's map is resized to the last flow's size when rounding makes them differ
    (at sizes that halve evenly they are equal, so global pooling of the concatenation is
    exactly the concatenation of each flow's pooled features).
    """

    backbone: MultiScaleConcat

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        finals = [outs[-1] for outs in self.backbone.forward_flows(x)]
        size = finals[-1].shape[2:]
        mode = "bilinear" if self.backbone.dims == 2 else "trilinear"
        # An identity at equal sizes; always called so traced graphs stay shape-generic.
        resized = [F.interpolate(f, size=size, mode=mode, align_corners=False) for f in finals[:-1]]
        return torch.cat([*resized, finals[-1]], dim=1)


def _create_msconcat(
    base: str,
    *,
    num_classes: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    flows: int = 3,
    downsample: str = "avg",
    drop_rate: float = 0.0,
    global_pool: str = "avg",
) -> MultiScaleConcatClassifier:
    cfg = _cfg(base)
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    # The plain model supplies the stages (and loads a pretrained backbone file).
    plain = create_model(base, num_classes=num_classes, pretrained=pretrained)
    stages, channels, strides = list(plain.backbone.stages), plain.backbone.channels, plain.backbone.strides
    backbone = MultiScaleConcat(stages, channels, strides, flows=flows, downsample=downsample,
                                in_chans=plain.backbone.in_chans)
    model = MultiScaleConcatClassifier(
        backbone, num_classes, num_features=sum(backbone.flow_channels()), drop_rate=drop_rate,
        global_pool=global_pool, pretrained_cfg=dict(cfg, architecture="msconcat_" + base, flows=flows,
                                                     downsample=downsample),
    )
    return model


def _cfg(base: str) -> dict[str, Any]:
    cfg = {k: v for k, v in model_cfg(base).items() if k not in ("tdaf_variant", "baseline")}
    cfg.update(family="msconcat", tdaf=False, tdaf_args=("flows", "downsample"), baseline=base)
    return cfg


# ResNet-50 is the paper's setting; the CIFAR and ResNet-18 ones are for quick runs.
_BASES = ("resnet50", "resnet50_cifar", "resnet18_cifar")


def _register(base: str) -> None:
    def builder(**kwargs: Any) -> MultiScaleConcatClassifier:
        return _create_msconcat(base, **kwargs)

    builder.__name__ = builder.__qualname__ = "msconcat_" + base
    builder.__doc__ = f"Multi-scale concat ablation (paper §4.5) on {base}: flows without attention."
    register_model(_cfg(base))(builder)


for _base in _BASES:
    _register(_base)
