"""Data machinery every task shares.

* :class:`TransformedDataset` / :func:`collate_skip`: per-sample seeded augmentation
  (a function of (seed, epoch, index)) and batches that skip unreadable samples;
* :class:`GlobalBatchSampler` / :class:`ShardSampler`: data order as a function of
  (seed, epoch), identical over any number of processes;
* the data set registry (:func:`register_dataset`), which each task fills;
* :func:`digits_pixels`: the bundled real handwritten digits behind every quick start.

Each task's own data sets and transforms live in its package
(:mod:`tdaf.classification.data`, ...).
"""

from __future__ import annotations

import torch

from .digits import DIGITS_MEAN, DIGITS_STD, digits_pixels
from .loading import Batch, RawSplit, TransformedDataset, collate_skip
from .registry import DatasetSpec, data_home, dataset_names, dataset_spec, register_dataset
from .samplers import GlobalBatchSampler, ShardSampler

__all__ = [
    "Batch", "TransformedDataset", "collate_skip", "RawSplit", "GlobalBatchSampler", "ShardSampler", "subset_indices",
    "DatasetSpec", "data_home", "register_dataset", "dataset_spec", "dataset_names", "digits_pixels", "DIGITS_MEAN",
    "DIGITS_STD",
]


def subset_indices(size: int, limit: int | None) -> list[int] | None:
    """A fixed random subset of ``limit`` indices (the same for every seed), or None for all."""
    if limit is None or limit >= size:
        return None
    if limit < 1:
        raise ValueError(f"subset: got {limit}; allowed: an int >= 1")
    g = torch.Generator().manual_seed(1234)
    return sorted(torch.randperm(size, generator=g)[:limit].tolist())
