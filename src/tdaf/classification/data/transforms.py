"""Image transforms of the paper's recipes (§4.1), on torchvision's ``transforms.v2``.

Training:
  * ``imagenet``: shorter side resized at random to [256, 480], a 224x224 crop at random,
    horizontal flip (He et al. 2016, as the paper says); the range scales with the crop
    size for other input sizes.
  * ``cifar``: 4-pixel zero padding, a 32x32 crop at random, horizontal flip.
  * ``digits``: padding and random crop only: a mirrored digit is another symbol
    (2, 3, 7 ...), so the flip would teach wrong labels.
  * ``none``: no augmentation (the evaluation pipeline).

Evaluation (:func:`eval_transform`) is driven by the checkpoint's meta keys
``input_size``, ``mean``, ``std`` and ``resize``: with ``resize`` an int, the shorter side
is resized to it and the centre ``input_size`` crop is taken (ImageNet 1-crop: 256 ->
224); with ``resize`` None, the image is resized straight to ``input_size``. The 10-crop
test (:func:`ten_crop_transform`) takes the four corners, the centre and their mirrors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ...errors import UserError
from ...io.images import to_rgb

__all__ = [
    "RECIPES", "eval_transform", "train_transform", "ten_crop_transform", "FitSize", "default_resize",
]

RECIPES = ("imagenet", "cifar", "digits", "none")

_META_KEYS = ("input_size", "mean", "std")


class FitSize(torch.nn.Module):
    """Resize a PIL image to exactly (H, W) (bilinear, antialiased) unless it already has that size."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, img: Image.Image) -> Image.Image:
        if (img.height, img.width) == self.size:
            return img
        return img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def default_resize(crop: int) -> int:
    """The shorter-side resize of the 1-crop test for a crop size (224 -> 256)."""
    return int(round(crop * 256 / 224))


def _hw(input_size: Sequence[int]) -> tuple[int, int]:
    if len(input_size) == 3:
        input_size = input_size[1:]
    if len(input_size) != 2 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"input_size: got {list(input_size)}; allowed: [C, H, W] or [H, W] with H, W >= 1")
    return int(input_size[0]), int(input_size[1])


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean/std: got {list(mean)} / {list(std)}; allowed: 3 numbers each, std > 0")
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]


def _check_meta(meta: dict[str, Any]) -> None:
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise UserError(
            f"checkpoint meta: missing {', '.join(missing)}; a classifier checkpoint needs "
            f"{', '.join(_META_KEYS)} and resize (written by tdaf train)"
        )


def eval_transform(meta: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation pipeline for a checkpoint's meta: a PIL image of any mode -> a
    normalised float tensor (C, H, W). 1-crop test of §4.1 when ``meta["resize"]`` is set."""
    _check_meta(meta)
    h, w = _hw(meta["input_size"])
    resize = meta.get("resize")
    ops: list[Any] = [T.Lambda(to_rgb)]
    if resize is None:
        ops.append(FitSize((h, w)))
    else:
        if int(resize) < min(h, w):
            raise ValueError(f"resize: got {resize}; allowed: None or an int >= the crop size {min(h, w)}")
        ops += [T.Resize(int(resize), interpolation=InterpolationMode.BILINEAR, antialias=True), T.CenterCrop((h, w))]
    return T.Compose(ops + _normalise(meta["mean"], meta["std"]))


class _StackCrops(torch.nn.Module):
    """Turn the 10 PIL crops of ``TenCrop`` into one (10, C, H, W) tensor."""

    def __init__(self, per_crop: Callable[[Image.Image], torch.Tensor]) -> None:
        super().__init__()
        self.per_crop = per_crop

    def forward(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.per_crop(c) for c in crops])


def ten_crop_transform(meta: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """The 10-crop test (§4.1, Tab. 3a): shorter side to ``resize``, the 4 corner and the
    centre ``input_size`` crops and their horizontal mirrors -> a (10, C, H, W) tensor."""
    _check_meta(meta)
    h, w = _hw(meta["input_size"])
    resize = meta.get("resize")
    if resize is None:
        raise ValueError(
            f"ten-crop: this checkpoint ({meta.get('data', 'its data')}) resizes images straight to "
            f"{h}x{w}, so there is nothing to crop; the 10-crop test is for resize-then-crop data "
            f"(imagefolder)"
        )
    return T.Compose([
        T.Lambda(to_rgb),
        T.Resize(int(resize), interpolation=InterpolationMode.BILINEAR, antialias=True),
        T.TenCrop((h, w)),
        _StackCrops(T.Compose(_normalise(meta["mean"], meta["std"]))),
    ])


def train_transform(
    recipe: str,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    scale_range: tuple[int, int] | None = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """The training augmentation of a recipe (see the module doc). ``resize`` only
    matters for ``none`` (it then equals :func:`eval_transform`); ``scale_range`` is the
    ``imagenet`` recipe's shorter-side range (default [256, 480] scaled by crop/224)."""
    h, w = _hw(input_size)
    if recipe == "imagenet":
        lo, hi = scale_range or (int(round(256 * min(h, w) / 224)), int(round(480 * min(h, w) / 224)))
        if not 0 < lo <= hi or lo < max(h, w):
            raise ValueError(f"scale_range: got [{lo}, {hi}]; allowed: min(range) >= crop size {max(h, w)}")
        ops: list[Any] = [
            T.Lambda(to_rgb),
            # RandomResize draws the shorter side uniformly from [lo, hi + 1).
            T.RandomResize(lo, hi + 1, interpolation=InterpolationMode.BILINEAR, antialias=True),
            T.RandomCrop((h, w)),
            T.RandomHorizontalFlip(),
        ]
    elif recipe in ("cifar", "digits"):
        ops = [T.Lambda(to_rgb), FitSize((h, w)), T.RandomCrop((h, w), padding=max(1, round(4 * min(h, w) / 32)))]
        if recipe == "cifar":
            ops.append(T.RandomHorizontalFlip())
    elif recipe == "none":
        return eval_transform({"input_size": [3, h, w], "mean": mean, "std": std, "resize": resize})
    else:
        raise ValueError(f"recipe: got {recipe!r}; allowed: {', '.join(RECIPES)}")
    return T.Compose(ops + _normalise(mean, std))
