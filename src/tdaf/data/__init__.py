"""Data sets in their real on-disk formats, the paper's transforms, and samplers.

``digits`` (scikit-learn's bundled handwritten digits, 32x32; no download), ``cifar10``
(the ``cifar-10-batches-py`` pickle folder) and ``imagefolder`` (ImageNet layout
``train/CLASS/*.jpg``, ``val/CLASS/*.jpg``). :func:`build_datasets` returns the two
splits, transformed, plus the facts a checkpoint records (:class:`DataInfo`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ._base import RawDataset
from .cifar10 import Cifar10Dataset
from .digits import DIGITS_MEAN, DIGITS_STD, DigitsDataset
from .imagefolder import ImageFolderDataset
from .loading import TransformedDataset, collate_skip
from .samplers import GlobalBatchSampler, ShardSampler
from .transforms import RECIPES, default_resize, eval_transform, ten_crop_transform, train_transform

__all__ = [
    "DATASETS", "DataInfo", "RawDataset", "build_datasets", "data_info", "open_split", "subset_indices",
    "TransformedDataset", "collate_skip", "GlobalBatchSampler", "ShardSampler",
    "eval_transform", "train_transform", "ten_crop_transform", "RECIPES",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class _Spec:
    size: int          # default crop / input size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    recipe: str        # default training augmentation
    crop_test: bool    # resize-then-centre-crop at test time (ImageNet) vs. resize to size
    needs_dir: bool


DATASETS: dict[str, _Spec] = {
    "digits": _Spec(32, DIGITS_MEAN, DIGITS_STD, "digits", False, False),
    "cifar10": _Spec(32, CIFAR10_MEAN, CIFAR10_STD, "cifar", False, True),
    "imagefolder": _Spec(224, IMAGENET_MEAN, IMAGENET_STD, "imagenet", True, True),
}


@dataclass
class DataInfo:
    """What a checkpoint must know about its data (the meta keys of ``tdaf.engine.checkpoint``)."""

    name: str
    class_names: list[str]
    mean: list[float]
    std: list[float]
    input_size: list[int]
    resize: int | None
    recipe: str
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        return dict(class_names=list(self.class_names), mean=list(self.mean), std=list(self.std),
                    input_size=list(self.input_size), resize=self.resize, data=self.name, recipe=self.recipe)


def _check_name(name: str) -> _Spec:
    if name not in DATASETS:
        raise ValueError(f"data: got {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


def open_split(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> RawDataset:
    """The untransformed ``train`` or ``val`` split of a data set."""
    _check_name(name)
    if name == "digits":
        return DigitsDataset(split)
    if name == "cifar10":
        return Cifar10Dataset(data_dir, split)
    return ImageFolderDataset(data_dir, split)


def data_info(name: str, class_names: list[str], input_size: int | None = None, recipe: str | None = None) -> DataInfo:
    """Defaults of a data set (mean/std, crop size, test resize, recipe) with overrides."""
    spec = _check_name(name)
    size = spec.size if input_size is None else int(input_size)
    if size < 1:
        raise ValueError(f"input_size: got {input_size}; allowed: an int >= 1")
    recipe = spec.recipe if recipe is None else recipe
    if recipe not in RECIPES:
        raise ValueError(f"recipe: got {recipe!r}; allowed: {', '.join(RECIPES)}")
    return DataInfo(name, list(class_names), list(spec.mean), list(spec.std), [3, size, size],
                    default_resize(size) if spec.crop_test else None, recipe)


def subset_indices(size: int, limit: int | None) -> list[int] | None:
    """A fixed random subset of ``limit`` indices (the same for every seed), or None for all."""
    if limit is None or limit >= size:
        return None
    if limit < 1:
        raise ValueError(f"subset: got {limit}; allowed: an int >= 1")
    g = torch.Generator().manual_seed(1234)
    return sorted(torch.randperm(size, generator=g)[:limit].tolist())


def build_datasets(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    input_size: int | None = None,
    recipe: str | None = None,
    seed: int = 0,
    train_subset: int | None = None,
    val_subset: int | None = None,
) -> tuple[TransformedDataset, TransformedDataset, DataInfo]:
    """The transformed training and validation splits and their :class:`DataInfo`."""
    spec = _check_name(name)
    if data_dir is not None and not spec.needs_dir:
        raise ValueError(f"--data-dir: {name} is built in and reads no folder; drop --data-dir or use "
                         f"--data cifar10 / imagefolder")
    train_raw = open_split(name, "train", data_dir)
    val_raw = open_split(name, "val", data_dir)
    info = data_info(name, train_raw.classes, input_size, recipe)
    mean, std = info.mean, info.std
    train_tf = train_transform(info.recipe, info.input_size, mean, std, resize=info.resize)
    val_tf = eval_transform(info.meta())
    train = TransformedDataset(train_raw, train_tf, seed, subset_indices(len(train_raw), train_subset))
    val = TransformedDataset(val_raw, val_tf, seed, subset_indices(len(val_raw), val_subset), seeded=False)
    return train, val, info
