"""One validation pass of any task, over one or many processes."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import ShardSampler
from ..errors import UserError
from .checkpoint import load_checkpoint, model_from_payload
from .distributed import all_reduce_sum, setup, teardown
from .resources import loader_workers
from .task import Task

__all__ = [
    "evaluate", "evaluate_dataset", "open_checkpoint", "CheckpointToEvaluate", "autocast", "AMP_DTYPES",
    "check_skipped", "UnreadableInputError", "UnreadableImageError",
]


class UnreadableInputError(UserError):
    """A sample (image, video, annotation) could not be read and ``--strict`` asks to stop."""


UnreadableImageError = UnreadableInputError  # the name of earlier releases


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, enabled: bool, dtype: str = "bf16") -> Any:
    """Mixed-precision autocast: bf16 (no loss scaling needed) or fp16 (for GPUs without
    bf16; the trainer scales the loss with a ``GradScaler``)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[dtype]) if enabled else nullcontext()


def check_skipped(skipped: list[str], strict: bool) -> None:
    if skipped and strict:
        raise UnreadableInputError(
            f"unreadable input {skipped[0]} (--strict stops at the first one; without it such inputs are "
            f"skipped and counted)"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    task: Task,
    *,
    amp: bool = False,
    amp_dtype: str = "bf16",
    channels_last: bool = False,
    strict: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """The task evaluator's metrics over ``loader`` (combined over all processes when
    distributed), plus ``skipped`` (unreadable inputs) and ``skipped_examples``."""
    evaluator = task.evaluator()
    was_training = model.training
    model.eval()
    skipped = torch.zeros(1, dtype=torch.float64, device=device)
    first_skipped: list[str] = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    try:
        for inputs, targets, bad in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            check_skipped(bad, strict)
            skipped += len(bad)
            first_skipped += bad[: max(0, 3 - len(first_skipped))]
            if inputs is None:
                continue
            inputs, targets = task.move(inputs, targets, device, fmt)
            with autocast(device, amp, amp_dtype):
                outputs = task.predict(model, inputs)
            evaluator.update(outputs, targets)
    finally:
        model.train(was_training)
    evaluator.gather()
    all_reduce_sum(skipped)
    result: dict[str, Any] = evaluator.compute()
    result["skipped"] = int(skipped.item())
    if first_skipped:
        result["skipped_examples"] = first_skipped
    return result


def evaluate_dataset(
    model: nn.Module,
    dataset: Dataset,
    collate: Any,
    task: Task,
    *,
    batch_size: int,
    workers: int | None = None,
    device: str = "auto",
    amp: bool = False,
    channels_last: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """:func:`evaluate` of ``model`` on a whole data set, by one process or sharded over the
    processes ``torchrun`` started: the metrics on the main process, None on the others.
    ``workers=None`` chooses the loader workers as training does (:func:`loader_workers`).
    What ``tdaf eval`` runs for every task."""
    env = setup(device)
    try:
        workers = loader_workers(workers, env.device.type, world_size=env.world_size)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                            sampler=ShardSampler(len(dataset), env.world_size, env.rank),
                            pin_memory=env.device.type == "cuda")
        model.to(env.device)
        if channels_last:
            model.to(memory_format=torch.channels_last_3d if task.input_dims() == 3 else torch.channels_last)
        result = evaluate(model, loader, env.device, task, amp=amp, channels_last=channels_last, strict=strict,
                          progress=progress and env.is_main)
    finally:
        if env.distributed:
            teardown()
    return result if env.is_main else None


@dataclass
class CheckpointToEvaluate:
    """A checkpoint opened for ``tdaf eval``: its model (eval mode), meta, the data set to
    evaluate on, and the whole checkpoint (config, history, ...), read once."""

    model: nn.Module
    meta: dict[str, Any]
    data: str
    payload: dict[str, Any]


def open_checkpoint(checkpoint: str | os.PathLike[str], data: str | None, batch_size: int) -> CheckpointToEvaluate:
    """What every task's ``evaluate_checkpoint`` starts with: the batch size checked, the
    checkpoint read and its model rebuilt, and the data set named (``data``, or the one the
    checkpoint was trained on)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size: got {batch_size}; allowed: >= 1")
    payload = load_checkpoint(checkpoint, "--checkpoint")
    model, meta = model_from_payload(payload, checkpoint, "--checkpoint")
    data = data or meta.get("data")
    if data is None:
        raise ValueError(f"--data: {checkpoint} does not record its data set; give --data")
    return CheckpointToEvaluate(model, meta, data, payload)
