"""Recursive Dual-Directional Nested Structure (R2DNS), paper §3.1, Eqs. 1, 2 and 5.

A backbone given as an ordered list of stages h_1..h_L runs as N weight-sharing
"flows". Flow N sees the input X, flow n sees ``downsample(input of flow n+1)`` (Eq. 2)
and runs only its first S(n) = L - (N - n) stages (Eq. 1). Stage l's output in flow n
is gated by ANAR g_l applied to flow n-1's (gated) output of the same stage, with the
half-scale residual of Eq. 5:

    x_{l+1}^(n) = h_l(x_l^(n)) * (g_l(x_{l+1}^(n-1)) + eta)

and passes through unchanged where flow n-1 has no stage l. Only the last flow's stage
outputs leave the module. Every BatchNorm inside (stages and ANARs) becomes MFBN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers.anar import ANAR, create_anar
from .layers.downsample import Downsample
from .layers.mfbn import convert_to_mfbn, mfbn_modules, set_flow

__all__ = [
    "R2DNS", "StageNet", "min_input_size", "check_input", "validate_stages", "validate_flows", "flow_inputs",
]

Stride = int | tuple[int, ...]


def _as_tuple(stride: Stride, dims: int) -> tuple[int, ...]:
    return (stride,) * dims if isinstance(stride, int) else tuple(stride)


def min_input_size(strides: Sequence[Stride], flows: int, dims: int = 2) -> tuple[int, ...]:
    """Smallest input, per spatial dim, at which every flow's input is at least the
    total stride of the stages that flow runs (inputs halve with rounding up)."""
    num_stages = len(strides)
    per_dim = [_as_tuple(s, dims) for s in strides]
    sizes = []
    for d in range(dims):
        cumulative = list(_cumprod([s[d] for s in per_dim]))
        need = 1
        for n in range(1, flows + 1):
            halvings = flows - n
            total = cumulative[num_stages - halvings - 1]
            # ceil(X / 2**k) >= total  <=>  X >= (total - 1) * 2**k + 1
            need = max(need, (total - 1) * 2**halvings + 1)
        sizes.append(need)
    return tuple(sizes)


def _cumprod(values: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for v in values:
        acc *= v
        out.append(acc)
    return out


def _validating() -> bool:
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


def check_input(x: torch.Tensor, in_chans: int | None, min_size: tuple[int, ...], dims: int) -> None:
    """Raise ValueError for an input a staged backbone cannot take."""
    if not _validating():
        return
    if x.dim() != dims + 2:
        layout = "(B, C, H, W)" if dims == 2 else "(B, C, T, H, W)"
        raise ValueError(f"input: expected a {dims + 2}-D tensor {layout}, got shape {tuple(x.shape)}")
    if in_chans is not None and x.shape[1] != in_chans:
        raise ValueError(f"input: expected {in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    size = tuple(x.shape[2:])
    if any(s < m for s, m in zip(size, min_size)):
        raise ValueError(
            f"input: spatial size {'x'.join(map(str, size))} is below the minimum "
            f"{'x'.join(map(str, min_size))} for this model (every flow's input must be at least the "
            f"total stride of the stages it runs)"
        )


torch.fx.wrap("check_input")


def _check_stage_output(y: torch.Tensor, expected: int, stage: int) -> None:
    if _validating() and y.shape[1] != expected:
        raise ValueError(
            f"stage {stage}: declared {expected} output channels, but the stage produced {y.shape[1]}"
        )


torch.fx.wrap("_check_stage_output")


class StageNet(nn.Module):
    """The plain backbone as stages: runs h_1..h_L once and returns every stage output."""

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int], strides: Sequence[Stride],
                 dims: int = 2, in_chans: int | None = 3) -> None:
        super().__init__()
        validate_stages(stages, channels, strides)
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.strides = list(strides)
        self.dims = dims
        self.in_chans = in_chans
        self.flows = 1

    def min_input_size(self) -> tuple[int, ...]:
        return min_input_size(self.strides, 1, self.dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_chans, self.min_input_size(), self.dims)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def validate_stages(stages: Sequence[nn.Module], channels: Sequence[int], strides: Sequence[Stride]) -> None:
    if len(stages) == 0:
        raise ValueError("stages: need at least one stage")
    if len(channels) != len(stages) or len(strides) != len(stages):
        raise ValueError(
            f"stages: got {len(stages)} stages but {len(channels)} channel counts and {len(strides)} strides"
        )


def validate_flows(flows: int, num_stages: int) -> None:
    if not isinstance(flows, int) or isinstance(flows, bool) or not 1 <= flows <= num_stages:
        raise ValueError(
            f"flows: got {flows!r}; allowed: an integer from 1 to the number of stages ({num_stages})"
        )


def flow_inputs(x: torch.Tensor, down: nn.Module, flows: int) -> list[torch.Tensor]:
    """Eq. 2: the inputs of flows 1..N, flow N's being ``x`` and each earlier one ``down``
    of the next."""
    inputs = [x]
    for _ in range(flows - 1):
        inputs.append(down(inputs[-1]))
    inputs.reverse()
    return inputs


class R2DNS(nn.Module):
    """R2DNS over a staged backbone (paper Fig. 2b, Eqs. 1, 2, 5).

    Args:
        stages: the backbone's stages h_1..h_L, in order.
        channels: output channels of each stage (ANAR g_l reads stage l's output).
        strides: each stage's spatial reduction (int, or a tuple per dim for video).
        flows: N, the number of flows (1 <= N <= L). N = 1 is the plain backbone.
        anar: ANAR variant, ``"anar2" | "anar3" | "anar5" | "anar7"``.
        eta: the half-scale residual of Eq. 5.
        downsample: DSF between flows, ``"avg"`` or ``"bilinear"``.
        dims: 2 for images, 3 for video (3D ANAR, DSF over T, H and W).
        depthwise: depthwise-separable ANAR (MobileNet).
        in_chans: expected input channels (checked), or None.

    ``forward`` returns the last flow's stage outputs ``[x_2^(N), ..., x_{L+1}^(N)]``.
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        channels: Sequence[int],
        strides: Sequence[Stride],
        flows: int = 3,
        anar: str = "anar3",
        eta: float = 0.5,
        downsample: str = "avg",
        dims: int = 2,
        depthwise: bool = False,
        in_chans: int | None = 3,
    ) -> None:
        super().__init__()
        validate_stages(stages, channels, strides)
        num_stages = len(stages)
        validate_flows(flows, num_stages)
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and 0.0 <= eta <= 1.0):
            raise ValueError(f"eta: got {eta!r}; allowed: a number in [0, 1] (paper: 0.5)")
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.strides = list(strides)
        self.flows = flows
        self.eta = float(eta)
        self.dims = dims
        self.in_chans = in_chans
        self.anar_name = anar
        self.down = Downsample(downsample, dims)
        # g_l exists where some flow n-1 runs stage l: l <= S(N-1) = L-1 (none when N = 1).
        num_attention = num_stages - 1 if flows > 1 else 0
        self.attention = nn.ModuleList(
            [create_anar(anar, channels[l], dims=dims, depthwise=depthwise) for l in range(num_attention)]
        )
        if flows == 1:
            create_anar(anar, 8)  # still validate the name
        convert_to_mfbn(self, flows)
        self._mfbn = mfbn_modules(self)
        self._mode = "bilinear" if dims == 2 else "trilinear"
        self._recorder: dict[tuple[int, int], torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"flows={self.flows}, anar={self.anar_name!r}, eta={self.eta}"

    def stages_in_flow(self, n: int) -> int:
        """S(n) = L - (N - n), Eq. 1 (n is 1-based)."""
        return len(self.stages) - (self.flows - n)

    def min_input_size(self) -> tuple[int, ...]:
        return min_input_size(self.strides, self.flows, self.dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_chans, self.min_input_size(), self.dims)
        inputs = flow_inputs(x, self.down, self.flows)  # inputs[n - 1] is flow n's input
        previous: list[torch.Tensor] = []
        for n in range(1, self.flows + 1):
            set_flow(self._mfbn, n - 1)
            y = inputs[n - 1]
            outputs: list[torch.Tensor] = []
            for l in range(self.stages_in_flow(n)):
                y = self.stages[l](y)
                _check_stage_output(y, self.channels[l], l + 1)
                if l < len(previous):  # flow n-1 ran stage l: gate with g_l (Eq. 5)
                    y = y * (self._attend(l, previous[l], y, n) + self.eta)
                outputs.append(y)
            previous = outputs
        set_flow(self._mfbn, self.flows - 1)
        return previous

    def _attend(self, l: int, source: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
        anar: ANAR = self.attention[l]  # type: ignore[assignment]
        a = anar(source)
        # ANAR upsamples x2; odd sizes round differently, so always resize to the target
        # (an identity when sizes already match, and it keeps traced graphs shape-generic).
        a = F.interpolate(a, size=target.shape[2:], mode=self._mode, align_corners=False)
        if self._recorder is not None:
            self._recorder[(l + 1, n)] = a.detach()
        return a
