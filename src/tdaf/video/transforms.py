"""Spatial transforms of clips (Hara et al. 2018), on torchvision's ``transforms.v2``.

A clip enters as a uint8 array ``(T, H, W, 3)`` and leaves as a normalised float tensor
``(3, T, H, W)``; every frame of a clip gets the same crop and flip.

Training recipes:
  * ``kinetics``: Hara's multi-scale corner cropping (a square of side
    ``scale * min(H, W)``, ``scale`` from {1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2}, at one of the
    four corners or the centre, resized to the input size) and a horizontal flip;
  * ``motion``: the same cropping without the flip (a mirror turns a motion to the left
    into one to the right: moving digits' labels);
  * ``none``: the evaluation pipeline.
Evaluation: the shorter side resized to the input size, then the centre crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

__all__ = ["RECIPES", "MultiScaleCornerCrop", "clip_transform", "HARA_SCALES"]

RECIPES = ("kinetics", "motion", "none")
HARA_SCALES = (1.0, 2 ** -0.25, 2 ** -0.5, 2 ** -0.75, 0.5)
_POSITIONS = ("c", "tl", "tr", "bl", "br")


class MultiScaleCornerCrop(nn.Module):
    """Hara's multi-scale corner crop of a video ``(..., T, C, H, W)`` to ``size x size``."""

    def __init__(self, size: int, scales: Sequence[float] = HARA_SCALES) -> None:
        super().__init__()
        self.size = int(size)
        self.scales = tuple(scales)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        h, w = video.shape[-2:]
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        position = _POSITIONS[int(torch.randint(len(_POSITIONS), ()))]
        side = max(1, int(min(h, w) * scale))
        top = {"c": (h - side) // 2, "tl": 0, "tr": 0, "bl": h - side, "br": h - side}[position]
        left = {"c": (w - side) // 2, "tl": 0, "tr": w - side, "bl": 0, "br": w - side}[position]
        video = TF.crop(video, top, left, side, side)
        return TF.resize(video, [self.size, self.size], antialias=True)

    def extra_repr(self) -> str:
        return f"size={self.size}, scales={tuple(round(s, 3) for s in self.scales)}"


class _ToClip(nn.Module):
    def forward(self, frames: np.ndarray) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected (T, H, W, 3) uint8, got shape {frames.shape}")
        return tv_tensors.Video(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))


class _ChannelsFirst(nn.Module):
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()  # (T, C, H, W) -> (C, T, H, W)


def clip_transform(recipe: str, size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The transform of a recipe (``none``: evaluation) to ``size x size`` clips."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe: got {recipe!r}; allowed for video: {', '.join(RECIPES)}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean/std: got {list(mean)} / {list(std)}; allowed: 3 numbers each, std > 0")
    if recipe == "none":
        spatial: list[nn.Module] = [T.Resize(size, antialias=True), T.CenterCrop(size)]
    else:
        spatial = [MultiScaleCornerCrop(size)]
        if recipe == "kinetics":
            spatial.append(T.RandomHorizontalFlip())
    return T.Compose([_ToClip(), *spatial, T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std)),
                      _ChannelsFirst()])
