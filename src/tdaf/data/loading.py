"""From a raw data set to batches: per-sample seeded augmentation and skip-aware collation.

A raw data set is anything with ``__len__`` and ``load(i) -> (sample or None, target, name)``
(None marks an unreadable sample; ``name`` then says which file and why).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["TransformedDataset", "collate_skip", "RawSplit", "Batch"]


class Batch(NamedTuple):
    """One collated batch: model inputs (None if every item was unreadable), targets, and
    the names of the unreadable items that were left out (each with the reason)."""

    inputs: Any
    targets: Any
    skipped: list[str]


class RawSplit(Protocol):
    """A split before any transform: ``load(i) -> (sample or None, target, name)``."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Any, Any, str]: ...


class TransformedDataset(Dataset):
    """``raw`` (optionally restricted to ``indices``) with a transform applied.

    The random draws of the transform for sample ``i`` in epoch ``e`` come from a
    generator seeded with ``(seed, e, i)``, so augmentation does not depend on the
    number of loader workers or processes, nor on where a run was interrupted.
    Items are ``(tensor or None, label, path)``; None marks an unreadable image.
    """

    def __init__(self, raw: RawSplit, transform: Callable[[Any], torch.Tensor], seed: int = 0,
                 indices: Sequence[int] | None = None, seeded: bool = True) -> None:
        self.raw = raw
        self.transform = transform
        self.seed = int(seed)
        self.indices = list(range(len(raw))) if indices is None else [int(i) for i in indices]
        self.seeded = seeded
        self.epoch = 0

    @property
    def classes(self) -> list[str]:
        return self.raw.classes  # type: ignore[attr-defined]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        index = self.indices[i]
        img, label, path = self.raw.load(index)
        if img is None:
            return None, label, path
        if not self.seeded:
            return self.transform(img), label, path
        key = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, np.uint32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(key[0]) << 31 | int(key[1]) >> 1)
            return self.transform(img), label, path


def collate_skip(items: list[tuple[Any, Any, str]]) -> Batch:
    """Stack the readable items: ``Batch(inputs or None, labels, names of skipped items)``;
    integer targets become a long tensor, tensors are stacked, anything else stays a list."""
    good = [it for it in items if it[0] is not None]
    skipped = [it[2] for it in items if it[0] is None]
    x = torch.stack([it[0] for it in good]) if good else None
    targets = [it[1] for it in good]
    y: Any
    if all(isinstance(t, int) for t in targets):
        y = torch.tensor(targets, dtype=torch.long)
    elif targets and all(isinstance(t, torch.Tensor) for t in targets):
        y = torch.stack(targets)
    else:
        y = targets
    return Batch(x, y, skipped)
