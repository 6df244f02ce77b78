"""The down-sample function (DSF) between flows, paper Eq. 2: stride 2 over every
spatial (and, for video, temporal) dimension, rounding up so odd sizes work."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Downsample", "DOWNSAMPLE_MODES"]

DOWNSAMPLE_MODES = ("avg", "bilinear")


def _half_size(x: torch.Tensor) -> list[int]:
    return [(s + 1) // 2 for s in x.shape[2:]]


torch.fx.wrap("_half_size")


class Downsample(nn.Module):
    """``"avg"``: 2x..x2 average pooling (area, anti-aliased), ``ceil_mode`` so an odd
    size rounds up; ``"bilinear"``: (tri)linear resize to ``ceil(size / 2)``
    (anti-aliased in 2D)."""

    def __init__(self, mode: str = "avg", dims: int = 2) -> None:
        super().__init__()
        if mode not in DOWNSAMPLE_MODES:
            raise ValueError(f"downsample: unknown mode {mode!r}; allowed: {', '.join(DOWNSAMPLE_MODES)}")
        if dims not in (2, 3):
            raise ValueError(f"downsample: dims must be 2 or 3, got {dims}")
        self.mode = mode
        self.dims = dims

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, dims={self.dims}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            pool = F.avg_pool2d if self.dims == 2 else F.avg_pool3d
            return pool(x, kernel_size=2, stride=2, ceil_mode=True)
        if self.dims == 2:
            return F.interpolate(x, size=_half_size(x), mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(x, size=_half_size(x), mode="trilinear", align_corners=False)
