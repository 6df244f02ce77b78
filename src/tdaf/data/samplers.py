"""Samplers whose data order is a function of (seed, epoch) only.

Training: :class:`GlobalBatchSampler` shuffles the whole set once per epoch and cuts it
into global batches; each global batch is split into equal contiguous blocks, one per
(accumulation micro-step, process). So one process accumulating A micro-batches and A
processes of data-parallel training see the very same images in the very same groups,
and a resumed run sees the same order as an uninterrupted one.

Evaluation: :class:`ShardSampler` gives each process every ``world_size``-th index,
without the padding of ``DistributedSampler`` (padding would count images twice).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["GlobalBatchSampler", "ShardSampler"]


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this process's micro-batches (lists of indices) for one epoch.

    Args:
        size: number of samples.
        global_batch: images per optimizer step, over all processes and micro-steps.
        world_size, rank: data-parallel processes and this one's index.
        accum_steps: micro-batches accumulated per optimizer step in each process.
        seed: the order is ``randperm(size)`` from a generator seeded with ``seed + epoch``.
        shuffle: False keeps the stored order.

    The last incomplete global batch of an epoch is dropped (it would give processes
    unequal shares); the shuffle changes every epoch, so every image is used.
    """

    def __init__(self, size: int, global_batch: int, world_size: int = 1, rank: int = 0, accum_steps: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        parts = world_size * accum_steps
        if global_batch < 1 or global_batch % parts:
            raise ValueError(
                f"batch_size: got {global_batch}; allowed: a multiple of processes x accum_steps = "
                f"{world_size} x {accum_steps} = {parts}"
            )
        if size < global_batch:
            raise ValueError(
                f"batch_size: got {global_batch}, but the training set has only {size} images; allowed: "
                f"<= {size} (every step uses one full batch)"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: got {rank}; allowed: 0..{world_size - 1}")
        self.size, self.global_batch = size, global_batch
        self.world_size, self.rank, self.accum_steps = world_size, rank, accum_steps
        self.micro_batch = global_batch // parts
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return self.size // self.global_batch

    def order(self) -> torch.Tensor:
        """This epoch's permutation of all indices (the same in every process)."""
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.order().tolist()
        for step in range(self.steps):
            base = step * self.global_batch
            for micro in range(self.accum_steps):
                start = base + (micro * self.world_size + self.rank) * self.micro_batch
                yield perm[start:start + self.micro_batch]

    def __len__(self) -> int:
        return self.steps * self.accum_steps


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: every sample exactly once over all processes."""

    def __init__(self, size: int, world_size: int = 1, rank: int = 0) -> None:
        self.size, self.world_size, self.rank = size, world_size, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
