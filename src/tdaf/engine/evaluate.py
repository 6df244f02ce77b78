"""Evaluation of a classifier: 1-crop and 10-crop tests (paper §4.1, Tab. 3a), over one or many processes."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .distributed import all_reduce_sum
from .tasks import ClassificationTask

__all__ = ["evaluate", "autocast", "UnreadableImageError"]


class UnreadableImageError(ValueError):
    """An image could not be decoded and ``--strict`` asks to stop."""


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CPU or GPU (no loss scaling needed with bf16)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def check_skipped(skipped: list[str], strict: bool) -> None:
    if skipped and strict:
        raise UnreadableImageError(
            f"unreadable image {skipped[0]} (--strict stops at the first one; without it such images are "
            f"skipped and counted)"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    task: ClassificationTask | None = None,
    *,
    amp: bool = False,
    channels_last: bool = False,
    strict: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """``{"top1", "top5", "loss", "images", "skipped"}`` over the loader (summed over all
    processes when distributed). A batch of shape (B, 10, C, H, W) is the 10-crop test:
    the softmax of the 10 crops is averaged per image."""
    task = task or ClassificationTask()
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    skipped = torch.zeros(1, dtype=torch.float64, device=device)
    first_skipped: list[str] = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    try:
        for x, y, bad in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            check_skipped(bad, strict)
            skipped += len(bad)
            first_skipped += bad[: max(0, 3 - len(first_skipped))]
            if x is None:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            crops = x.dim() == 5
            if crops:
                b, n = x.shape[:2]
                x = x.flatten(0, 1)
            x = x.contiguous(memory_format=fmt)
            with autocast(device, amp):
                out = model(x)
            if crops:
                out = out.float().softmax(dim=1).view(b, n, -1).mean(dim=1)
            sums += task.batch_stats(out, y, probs=crops)
    finally:
        model.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(skipped)
    result: dict[str, Any] = task.summarize(sums.cpu())
    result["skipped"] = int(skipped.item())
    if first_skipped:
        result["skipped_examples"] = first_skipped
    return result
