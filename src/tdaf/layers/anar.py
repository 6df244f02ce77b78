"""Attention Network across Recurrence (ANAR), paper §3.2 and Table 1.

An hourglass: a 1x1 "trans" conv, stride-2 3x3 down convs, 4x4 stride-2 transposed
up convs with skip connections ("SC", 1x1 conv + BN) added before the ReLU, and a final
1x1 conv (with bias) to one channel followed by a sigmoid. Every other conv/deconv is
followed by BatchNorm (turned into MFBN by R2DNS) and ReLU. The net effect is an
upsampling by 2: ANAR reads flow n-1's stage output and produces the mask for flow n's
stage output, which is twice as large.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tracing import is_eager

__all__ = ["ANAR", "ANARSpec", "ANAR_SPECS", "ANAR_UPS", "create_anar", "anar_names"]

# How ANAR's up path doubles the size: "deconv", Table 1's 4x4 stride-2 transposed conv; or
# "resize", a x2 bilinear resize then a 3x3 conv (no checkerboard pattern from the stride-2
# kernel overlap; same widths).
ANAR_UPS: tuple[str, ...] = ("deconv", "resize")


@dataclass(frozen=True)
class ANARSpec:
    """Widths of Table 1 as divisors of the input channels ``c``.

    ``trans``: the first 1x1 conv (c/trans); ``downs``: one 3x3 stride-2 conv each;
    ``ups``: one 4x4 stride-2 transposed conv each (``interpolate`` replaces them with a
    parameter-free x2 bilinear resize, ANAR-2). Skip connections join down-part outputs
    to the first ``len(downs)`` up outputs of the same resolution.
    """

    trans: int
    downs: tuple[int, ...]
    ups: tuple[int, ...]
    interpolate: bool = False


ANAR_SPECS: dict[str, ANARSpec] = {
    "anar7": ANARSpec(trans=4, downs=(8, 8), ups=(16, 16, 32)),
    "anar5": ANARSpec(trans=4, downs=(8,), ups=(16, 32)),
    "anar3": ANARSpec(trans=8, downs=(), ups=(32,)),
    "anar2": ANARSpec(trans=8, downs=(), ups=(), interpolate=True),
}


def anar_names() -> list[str]:
    return sorted(ANAR_SPECS)


def _width(c: int, divisor: int, floor: int = 1) -> int:
    return min(c, max(floor, c // divisor))


def _conv(dims: int, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1,
          bias: bool = False) -> nn.Module:
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    return cls(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=bias)


# In inference, below this many input elements, a CPU transposed conv runs on PyTorch's
# native kernel (``slow_conv_transpose2d/3d``): oneDNN's costs ~90 us a call however small
# the input, against ~15 us native on the maps ANAR sees at batch 1 (8x8 and smaller); from
# about (1, 32, 28, 28) on oneDNN is as fast or faster. Same operation, same parameters,
# results equal to float rounding. Training keeps oneDNN's kernel: its backward is the
# measured one, and a run's numbers do not move with this (a 2-epoch digits run is
# sensitive to rounding: 95.83 vs 94.44 top-1 for TDAF in the demo).
_NATIVE_DECONV_MAX_NUMEL = 16384
_NATIVE_DECONV = {2: torch.ops.aten.slow_conv_transpose2d, 3: torch.ops.aten.slow_conv_transpose3d}


def _register_native_deconv_flops() -> None:
    # torch.utils.flop_counter counts aten.convolution only: count the native kernels as the
    # transposed convs they are, so the GMACs of a model do not depend on its input size.
    from torch.utils.flop_counter import conv_flop_count, register_flop_formula

    def flops(x_shape: list[int], w_shape: list[int], *args: object, out_shape: list[int], **kwargs: object) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=True)

    for op in _NATIVE_DECONV.values():
        try:
            register_flop_formula(op)(flops)
        except RuntimeError:  # already registered (by torch itself or an earlier import)
            pass


_register_native_deconv_flops()


class _Deconv:
    """The 4x4 stride-2 transposed conv (exact x2) of ANAR's up path; a plain
    ``nn.ConvTranspose2d/3d`` in its parameters, state dict and results."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.is_grad_enabled() and is_eager() and x.device.type == "cpu" and self.groups == 1
                and x.numel() <= _NATIVE_DECONV_MAX_NUMEL and x.dtype in (torch.float32, torch.float64)):
            dims = x.dim() - 2
            return _NATIVE_DECONV[dims](x, self.weight, list(self.kernel_size), self.bias, list(self.stride),
                                        list(self.padding), list(self.output_padding), list(self.dilation))
        return super().forward(x)  # type: ignore[misc]


class Deconv2d(_Deconv, nn.ConvTranspose2d):
    __doc__ = _Deconv.__doc__


class Deconv3d(_Deconv, nn.ConvTranspose3d):
    __doc__ = _Deconv.__doc__


def _deconv(dims: int, cin: int, cout: int, groups: int = 1) -> nn.Module:
    cls = Deconv2d if dims == 2 else Deconv3d
    return cls(cin, cout, 4, stride=2, padding=1, groups=groups, bias=False)  # exact x2


def _bn(dims: int, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm3d(c)


class ResizeConv(nn.Sequential):
    """ANAR's x2 up layer with ``up="resize"``: a bilinear (trilinear) x2 resize, then a 3x3
    conv (Odena et al. 2016: the stride-2 4x4 transposed conv's overlapping kernels draw
    a checkerboard; a resize first does not)."""

    def __init__(self, dims: int, cin: int, cout: int, groups: int = 1) -> None:
        mode = "bilinear" if dims == 2 else "trilinear"
        super().__init__(nn.Upsample(scale_factor=2.0, mode=mode, align_corners=False),
                         _conv(dims, cin, cout, 3, padding=1, groups=groups))


def _resample(dims: int, cin: int, cout: int, up: bool, depthwise: bool, up_mode: str = "deconv") -> nn.Sequential:
    """A 3x3 stride-2 conv (down) or 4x4 stride-2 transposed conv (up; ``up_mode="resize"``:
    :class:`ResizeConv`), then BN.

    Depthwise form (MobileNet): a depthwise k x k at the input width, BN, ReLU, then a
    pointwise 1x1 to the new width, BN. The trailing ReLU is applied by the caller, after
    any skip connection is added.
    """
    if up:
        layer = ((lambda ci, co, g: _deconv(dims, ci, co, groups=g)) if up_mode == "deconv" else
                 (lambda ci, co, g: ResizeConv(dims, ci, co, groups=g)))
    else:
        layer = lambda ci, co, g: _conv(dims, ci, co, 3, stride=2, padding=1, groups=g)  # noqa: E731
    if not depthwise:
        return nn.Sequential(layer(cin, cout, 1), _bn(dims, cout))
    return nn.Sequential(
        layer(cin, cin, cin), _bn(dims, cin), nn.ReLU(inplace=True),
        _conv(dims, cin, cout, 1), _bn(dims, cout),
    )


def _crop_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # An up conv doubles exactly; after a stride-2 conv on an odd size that is one
    # more than the skip's size, so drop the extra row/column (trace-friendly slicing).
    index = [slice(None), slice(None)] + [slice(0, s) for s in ref.shape[2:]]
    return x[tuple(index)]


class ANAR(nn.Module):
    """One ANAR attention module g_l (Table 1): ``(B, c, *S) -> (B, 1, *2S)`` in (0, 1).

    ``min_width``: no layer narrower than this (nor than ``channels``); Table 1's widths
    c/8 .. c/32 are 1-4 channels on a 32-128 channel backbone, 1 (the default) keeps them.
    ``up``: how the up path doubles the size (:data:`ANAR_UPS`)."""

    def __init__(self, channels: int, spec: ANARSpec | str = "anar3", dims: int = 2, depthwise: bool = False,
                 min_width: int = 1, up: str = "deconv") -> None:
        super().__init__()
        if isinstance(spec, str):
            spec = _lookup(spec)
        if dims not in (2, 3):
            raise ValueError(f"ANAR dims must be 2 or 3, got {dims}")
        if channels < 1:
            raise ValueError(f"ANAR channels must be >= 1, got {channels}")
        check_anar_options(min_width, up)
        self.in_channels = channels
        self.dims = dims
        self.spec = spec
        floor = min_width
        width = _width(channels, spec.trans, floor)
        self.trans = nn.Sequential(_conv(dims, channels, width, 1), _bn(dims, width), nn.ReLU(inplace=True))
        down_widths = [width]
        self.downs = nn.ModuleList()
        for div in spec.downs:
            out = _width(channels, div, floor)
            self.downs.append(nn.Sequential(_resample(dims, down_widths[-1], out, False, depthwise),
                                            nn.ReLU(inplace=True)))
            down_widths.append(out)
        self.ups = nn.ModuleList()
        self.skips = nn.ModuleList()
        cur = down_widths[-1]
        for i, div in enumerate(spec.ups):
            out = _width(channels, div, floor)
            self.ups.append(_resample(dims, cur, out, True, depthwise, up))
            if i < len(spec.downs):  # SC from the down-part output of the same resolution
                src = down_widths[-(i + 2)]
                self.skips.append(nn.Sequential(_conv(dims, src, out, 1), _bn(dims, out)))
            cur = out
        self.head = _conv(dims, cur, 1, 1, bias=True)
        self.interpolate = spec.interpolate
        self._mode = "bilinear" if dims == 2 else "trilinear"
        self.reset_parameters()

    def reset_parameters(self, gate: float | None = None, fan_in: bool = False) -> None:
        """Kaiming-normal convolutions with zero biases (``gate=None``: every layer random,
        the output near 0.5 with a random spread); with ``gate`` in (0, 1), the last 1x1
        conv starts at weight 0 and bias ``logit(gate)``, so the module outputs exactly
        ``gate`` everywhere while its gradient is not zero (as a zero-initialised residual
        branch). R2DNS uses ``gate = 1 - eta`` to make attention start as the identity.

        ``fan_in``: Kaiming's fan-in mode for every layer, the last one included, and (with
        ``gate``) the last bias at ``logit(gate)`` with its weights left random: the gates
        start around ``gate`` with a spread of about one logit whatever the width, and every
        layer gets a gradient from the first step. (Fan-out mode on the one-channel last
        conv draws its weights with std sqrt(2) at every width: gates start near 0 or 1.)"""
        if gate is not None and not (isinstance(gate, (int, float)) and 0.0 < gate < 1.0):
            raise ValueError(f"gate: got {gate!r}; allowed: a number in (0, 1) or None")
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in" if fan_in else "fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if fan_in:
            # The last conv reads ReLU'd BN outputs (second moment 1/2): std sqrt(2 / fan_in)
            # gives its logits a variance of about 1.
            with torch.no_grad():
                if gate is not None:
                    self.head.bias.fill_(math.log(gate / (1.0 - gate)))
        elif gate is not None:
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.fill_(math.log(gate / (1.0 - gate)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.trans(x)
        feats = [y]
        for down in self.downs:
            y = down(y)
            feats.append(y)
        for i, up in enumerate(self.ups):
            y = up(y)
            if i < len(self.skips):
                src = feats[-(i + 2)]
                y = _crop_to(y, src) + self.skips[i](src)
            y = F.relu(y)
        if self.interpolate:
            y = F.interpolate(y, scale_factor=2.0, mode=self._mode, align_corners=False)
        return torch.sigmoid(self.head(y))


def _lookup(name: str) -> ANARSpec:
    key = name.lower().replace("-", "")
    if key not in ANAR_SPECS:
        raise ValueError(f"anar: unknown variant {name!r}; allowed: {', '.join(anar_names())}")
    return ANAR_SPECS[key]


def check_anar_options(min_width: int, up: str) -> None:
    """ValueError naming ``anar_min_width`` / ``anar_up`` for values ANAR cannot take."""
    if not isinstance(min_width, int) or isinstance(min_width, bool) or min_width < 1:
        raise ValueError(f"anar_min_width: got {min_width!r}; allowed: an integer >= 1 (1: Table 1's widths)")
    if up not in ANAR_UPS:
        raise ValueError(f"anar_up: got {up!r}; allowed: {', '.join(ANAR_UPS)}")


def create_anar(name: str, channels: int, dims: int = 2, depthwise: bool = False, min_width: int = 1,
                up: str = "deconv") -> ANAR:
    """Build ANAR-2/3/5/7 by name (``"anar3"``, ``"ANAR-5"``, ...)."""
    return ANAR(channels, _lookup(name), dims=dims, depthwise=depthwise, min_width=min_width, up=up)
