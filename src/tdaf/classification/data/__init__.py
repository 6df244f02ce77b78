"""Classification data sets in their real on-disk formats, and the paper's transforms.

``digits`` (scikit-learn's bundled handwritten digits, 32x32; no download),
``cluttered_digits`` (those digits on 48x48 canvases among clutter; the main job), ``cifar10``
(the ``cifar-10-batches-py`` pickle folder) and ``imagefolder`` (ImageNet layout
``train/CLASS/*.jpg``, ``val/CLASS/*.jpg``), registered in :mod:`tdaf.data.registry`
for the ``classification`` task. :func:`build_datasets` returns the two splits,
transformed, plus the facts a checkpoint records (:class:`DataInfo`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ...data import DIGITS_MEAN, DIGITS_STD, TransformedDataset, subset_indices
from ...data.cluttered import (
    CLUTTER_SMALL, CLUTTERED_MEAN, CLUTTERED_SMALL_MEAN, CLUTTERED_SMALL_STD, CLUTTERED_STD,
)
from ...data.registry import DatasetSpec, dataset_names, dataset_spec, register_dataset
from ...models.resnet import CIFAR_MEAN, CIFAR_STD
from ._base import RawDataset
from .cifar10 import Cifar10Dataset
from .digits import ClutteredDigitsDataset, DigitsDataset
from .imagefolder import ImageFolderDataset
from .transforms import RECIPES, default_resize, eval_transform, ten_crop_transform, train_transform

__all__ = [
    "TASK", "DataInfo", "RawDataset", "build_datasets", "data_info", "open_split", "dataset_list",
    "eval_transform", "train_transform", "ten_crop_transform", "RECIPES", "CIFAR10_MEAN", "CIFAR10_STD",
]

TASK = "classification"
CIFAR10_MEAN, CIFAR10_STD = CIFAR_MEAN, CIFAR_STD


def _defaults(size: int, mean: tuple[float, ...], std: tuple[float, ...], recipe: str, crop_test: bool) -> dict[str, Any]:
    # crop_test: resize-then-centre-crop at test time (ImageNet) rather than resize to the input size.
    return dict(size=size, mean=tuple(mean), std=tuple(std), recipe=recipe, crop_test=crop_test)


register_dataset(DatasetSpec(
    "digits", TASK, lambda split, data_dir: DigitsDataset(split), needs_dir=False,
    help="scikit-learn's handwritten digits, 32x32, built in (no download)",
    defaults=_defaults(32, DIGITS_MEAN, DIGITS_STD, "digits", False)))
register_dataset(DatasetSpec(
    "cluttered_digits", TASK, lambda split, data_dir: ClutteredDigitsDataset(split), needs_dir=False,
    help="the same digits at random places on 48x48 canvases among fragments of other digits (the main job), "
    "built in", defaults=_defaults(48, CLUTTERED_MEAN, CLUTTERED_STD, "digits", False)))
register_dataset(DatasetSpec(
    "cluttered_digits_small", TASK,
    lambda split, data_dir: ClutteredDigitsDataset(split, CLUTTER_SMALL, "cluttered_digits_small"), needs_dir=False,
    help="smaller digits (16-20 px) at random places on 64x64 canvases among 8 fragments of 8 px, built in",
    defaults=_defaults(64, CLUTTERED_SMALL_MEAN, CLUTTERED_SMALL_STD, "digits", False)))
register_dataset(DatasetSpec(
    "cifar10", TASK, lambda split, data_dir: Cifar10Dataset(data_dir, split), needs_dir=True,
    help="the cifar-10-batches-py folder", defaults=_defaults(32, CIFAR10_MEAN, CIFAR10_STD, "cifar", False)))
register_dataset(DatasetSpec(
    "imagefolder", TASK, lambda split, data_dir: ImageFolderDataset(data_dir, split), needs_dir=True,
    help="ImageNet layout train/CLASS/*.jpg, val/CLASS/*.jpg",
    defaults=_defaults(224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, "imagenet", True)))


def dataset_list() -> list[str]:
    """The classification data sets, for ``--data`` choices."""
    return dataset_names(TASK)


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


def open_split(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> RawDataset:
    """The untransformed ``train`` or ``val`` split of a data set."""
    return dataset_spec(name, TASK).open(split, data_dir)


def data_info(name: str, class_names: list[str], input_size: int | None = None, recipe: str | None = None) -> DataInfo:
    """Defaults of a data set (mean/std, crop size, test resize, recipe) with overrides."""
    d = dataset_spec(name, TASK).defaults
    size = d["size"] if input_size is None else int(input_size)
    if size < 1:
        raise ValueError(f"input_size: got {input_size}; allowed: an int >= 1")
    recipe = d["recipe"] if recipe is None else recipe
    if recipe not in RECIPES:
        raise ValueError(f"recipe: got {recipe!r}; allowed: {', '.join(RECIPES)}")
    return DataInfo(name, list(class_names), list(d["mean"]), list(d["std"]), [3, size, size],
                    default_resize(size) if d["crop_test"] else None, recipe)


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
    spec = dataset_spec(name, TASK)
    if data_dir is not None and not spec.needs_dir:
        others = " / ".join(n for n in dataset_list() if dataset_spec(n, TASK).needs_dir)
        raise ValueError(f"--data-dir: {name} is built in and reads no folder; drop --data-dir or use "
                         f"--data {others}")
    train_raw = open_split(name, "train", data_dir)
    val_raw = open_split(name, "val", data_dir)
    info = data_info(name, train_raw.classes, input_size, recipe)
    mean, std = info.mean, info.std
    train_tf = train_transform(info.recipe, info.input_size, mean, std, resize=info.resize)
    val_tf = eval_transform(info.meta())
    train = TransformedDataset(train_raw, train_tf, seed, subset_indices(len(train_raw), train_subset))
    val = TransformedDataset(val_raw, val_tf, seed, subset_indices(len(val_raw), val_subset), seeded=False)
    return train, val, info
