"""Data-parallel training over processes launched by ``torchrun`` (gloo on CPU, NCCL on GPU).

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; without them the run is a single process. Only rank 0 writes logs
and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError

__all__ = [
    "DistEnv", "setup", "teardown", "all_reduce_sum", "all_gather_objects", "broadcast_object", "broadcast_buffers",
    "resolve_device",
]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the process's GPU when CUDA is available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device: got {device!r}, but CUDA is not available here; allowed: cpu, auto")
        if device == "cuda":
            device = f"cuda:{local_rank}"
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device: got {device!r}; this machine has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(index)
    elif device != "cpu":
        raise UserError(f"device: got {device!r}; allowed: auto, cpu, cuda, cuda:N")
    return torch.device(device)


def setup(device: str = "auto") -> DistEnv:
    """Join the process group when launched by ``torchrun`` (idempotent); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return DistEnv(rank, world, local_rank, dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: object) -> list[object]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in a single process.
    For evaluators whose state is not a sum (COCO detections, per-video scores)."""
    if dist.is_available() and dist.is_initialized():
        out: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every process (``obj`` itself in a single process)."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BN/MFBN running statistics) to every process, so that
    evaluation and the checkpoint see one model."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src=0)
