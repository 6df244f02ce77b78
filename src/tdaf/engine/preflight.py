"""Checks a training run makes before its first step, so that a setting that cannot work
is refused by name instead of by a raw error from deep inside torch."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .task import Task

__all__ = ["check_batch_norm_batch", "check_run_inputs", "same_file", "RUN_OUTPUTS"]

# What a training run writes in its --out folder (files; tb/ is a folder of event files).
RUN_OUTPUTS = ("best.pt", "last.pt", "metrics.csv", "config.yaml")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (symlinks and hard links followed; False if either is missing)."""
    try:
        return os.path.samefile(Path(a).expanduser(), Path(b).expanduser())
    except OSError:
        return False


def check_run_inputs(out: Path, cfg: Any, config_file: str | os.PathLike[str] | None = None) -> None:
    """Refuse a run whose inputs (``--config``, ``--pretrained``, ``--init-from``, and
    ``--resume`` unless it is this folder's own ``last.pt`` or ``best.pt``, which a resumed
    run continues) are files the run would write or, with ``--overwrite``, delete."""
    inputs = [("--config", config_file), ("--pretrained", getattr(cfg, "pretrained", None)),
              ("--init-from", getattr(cfg, "init_from", None)), ("--resume", getattr(cfg, "resume", None))]
    for flag, path in inputs:
        if not path or not isinstance(path, (str, os.PathLike)):
            continue
        for name in RUN_OUTPUTS:
            if not same_file(path, out / name):
                continue
            if flag == "--resume" and name in ("last.pt", "best.pt"):
                continue
            raise UserError(f"{flag}: {path} is {out / name}, a file this run writes in --out {out}; tdaf never "
                            f"writes over the inputs of a run: copy it elsewhere, or choose another --out")


@torch.no_grad()
def check_batch_norm_batch(model: nn.Module, dataset: Any, collate: Any, task: Task, micro_batch: int,
                           parts: int, batch_size: int, device: torch.device) -> None:
    """Refuse a batch that leaves a BatchNorm layer one value per channel in training
    (torch: "Expected more than 1 value per channel when training"), naming
    ``--batch-size`` and the smallest that works.

    Only a micro-batch of 1 can do that (a BatchNorm sees batch x positions values per
    channel); then one sample is run through the model in eval mode (no statistic moves)
    and the values each BatchNorm would see are counted. ``parts`` is processes x
    accumulation steps (the global batch is ``parts`` micro-batches).
    """
    if micro_batch > 1:
        return
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not norms or len(dataset) == 0:
        return
    batch = None
    for i in range(min(len(dataset), 8)):  # the first readable sample (unreadable ones are the trainer's business)
        batch = collate([dataset[i]])
        if batch[0] is not None:
            break
    if batch is None or batch[0] is None:
        return
    inputs, _ = task.move(batch[0], batch[1], device)
    seen: dict[str, tuple[int, tuple[int, ...]]] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if isinstance(x, torch.Tensor) and x.dim() >= 2:
                n = x.shape[0] * math.prod(x.shape[2:])
                if name not in seen or n < seen[name][0]:
                    seen[name] = (n, tuple(x.shape))
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in norms.items()]
    was_training = model.training
    model.eval()
    try:
        task.predict(model, inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    single = [(name, shape) for name, (n, shape) in seen.items() if n <= 1]
    if single:
        name, shape = single[0]
        raise UserError(
            f"--batch-size: got {batch_size}, which gives each process {micro_batch} sample per step; BatchNorm "
            f"layer {name} then sees one value per channel (input {list(shape)}) and cannot normalise it in "
            f"training; the smallest --batch-size that works is {2 * parts}"
            + (f" ({parts} processes x accumulation steps, 2 samples each)" if parts > 1 else "")
        )
