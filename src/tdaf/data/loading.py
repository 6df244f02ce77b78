"""From a raw data set to batches: per-sample seeded augmentation and skip-aware collation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._base import RawDataset

__all__ = ["TransformedDataset", "collate_skip", "Batch"]

Batch = tuple[torch.Tensor | None, torch.Tensor, list[str]]


class TransformedDataset(Dataset):
    """``raw`` (optionally restricted to ``indices``) with a transform applied.

    The random draws of the transform for sample ``i`` in epoch ``e`` come from a
    generator seeded with ``(seed, e, i)``, so augmentation does not depend on the
    number of loader workers or processes, nor on where a run was interrupted.
    Items are ``(tensor or None, label, path)``; None marks an unreadable image.
    """

    def __init__(self, raw: RawDataset, transform: Callable[[Any], torch.Tensor], seed: int = 0,
                 indices: Sequence[int] | None = None, seeded: bool = True) -> None:
        self.raw = raw
        self.transform = transform
        self.seed = int(seed)
        self.indices = list(range(len(raw))) if indices is None else [int(i) for i in indices]
        self.seeded = seeded
        self.epoch = 0

    @property
    def classes(self) -> list[str]:
        return self.raw.classes

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


def collate_skip(items: list[tuple[torch.Tensor | None, int, str]]) -> Batch:
    """Stack the readable items; return ``(images or None, labels, paths of skipped items)``."""
    good = [it for it in items if it[0] is not None]
    skipped = [it[2] for it in items if it[0] is None]
    x = torch.stack([it[0] for it in good]) if good else None  # type: ignore[misc]
    y = torch.tensor([it[1] for it in good], dtype=torch.long)
    return x, y, skipped
