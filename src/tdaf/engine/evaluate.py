"""One validation pass of any task, over one or many processes."""

from __future__ import annotations

import dataclasses
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import ShardSampler
from ..errors import UserError
from ..inference import fold_batchnorm
from ..io.progress import track
from .checkpoint import load_checkpoint, model_from_payload
from .distributed import all_reduce_sum, setup, teardown
from .options import CheckpointToEvaluate, EvalData, EvalOptions
from .resources import loader_workers
from .task import Evaluator, Task, checkpoint_task, foreign_flag_error, task_flags

__all__ = [
    "evaluate", "evaluate_dataset", "evaluate_checkpoint", "open_checkpoint", "EvalOptions", "EvalData",
    "CheckpointToEvaluate", "autocast", "AMP_DTYPES", "check_skipped", "UnreadableInputError", "UnreadableImageError",
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
    progress: bool | None = False,
    desc: str = "eval",
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    """The task evaluator's metrics over ``loader`` (combined over all processes when
    distributed), plus ``skipped`` (unreadable inputs) and ``skipped_examples``.
    ``evaluator``: one to fill instead of a fresh ``task.evaluator()``."""
    evaluator = evaluator if evaluator is not None else task.evaluator()
    was_training = model.training
    model.eval()
    skipped = torch.zeros(1, dtype=torch.float64, device=device)
    first_skipped: list[str] = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    try:
        for inputs, targets, bad in track(loader, desc=desc, unit="batch", enabled=progress):
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
    progress: bool | None = None,
    evaluator: Evaluator | None = None,
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
                          progress=progress if env.is_main else False, evaluator=evaluator)
    finally:
        if env.distributed:
            teardown()
    return result if env.is_main else None


def open_checkpoint(checkpoint: str | os.PathLike[str], options: EvalOptions) -> tuple[Task, CheckpointToEvaluate]:
    """The checkpoint read once, its task (from the registry) and its model rebuilt, and the
    data set named (``options.data``, or the one the checkpoint was trained on) with its folder:
    ``options.data_dir``, else the absolute one the checkpoint records, else (checkpoints of
    earlier releases) its run's ``data_dir`` or ``out/data/<data>`` where that still exists."""
    payload = load_checkpoint(checkpoint, "--checkpoint")
    task = checkpoint_task(payload, checkpoint)
    model, meta = model_from_payload(payload, checkpoint, "--checkpoint")
    data = options.data or meta.get("data")
    if data is None:
        raise ValueError(f"--data: {checkpoint} does not record its data set; give --data")
    data_dir = str(options.data_dir) if options.data_dir is not None else _recorded_data_dir(payload, meta, data)
    return task, CheckpointToEvaluate(model, meta, data, payload, str(checkpoint), data_dir)


def _recorded_data_dir(payload: dict[str, Any], meta: dict[str, Any], data: str) -> str | None:
    cfg = payload.get("config", {})
    if data != meta.get("data", cfg.get("data")):
        return None  # another data set than the run's: its own default place
    if meta.get("data_dir"):
        return str(meta["data_dir"])
    if cfg.get("data_dir"):
        return str(cfg["data_dir"])
    built = Path(cfg.get("out") or ".").expanduser() / "data" / data  # bundled sets written under the run
    return str(built) if cfg.get("out") and built.is_dir() else None


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], options: EvalOptions | None = None,
                        **fields: Any) -> dict[str, Any] | None:
    """``tdaf eval`` of a checkpoint of any task: its task's metrics on a data set split, with the
    checkpoint's own preprocessing. ``options`` (an :class:`EvalOptions`; ``fields`` replace
    its values, e.g. ``evaluate_checkpoint(path, split="val", task={"ten_crop": True})``).
    The model evaluated is its inference form (:func:`tdaf.fold_batchnorm`, folded in every
    process) unless ``options.fold_bn`` is False; the training loop's own validation runs
    :func:`evaluate` on the model it trains, never folded.
    Returns the result on the main process: ``checkpoint``, ``model``, ``data``, ``split``,
    ``data_dir``, ``epoch``, the metrics, ``skipped`` and the task's own keys; None on the
    other processes when run under ``torchrun``."""
    options = dataclasses.replace(options or EvalOptions(), **fields)
    if options.split not in ("train", "val"):
        raise ValueError(f"--split: got {options.split!r}; allowed: train, val")
    if options.subset is not None and options.subset < 1:
        raise ValueError(f"--subset: got {options.subset}; allowed: >= 1")
    task, opened = open_checkpoint(checkpoint, options)
    allowed = task_flags(task, "eval")
    unknown = sorted(k for k, v in options.task.items() if k not in allowed and v not in (None, False))
    if unknown:
        raise foreign_flag_error(task, "eval", unknown[0], checkpoint)
    batch_size = options.batch_size if options.batch_size is not None else task.eval_batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size: got {batch_size}; allowed: >= 1")
    data = task.eval_data(opened, options)
    workers = 0 if options.workers is None and data.in_memory else options.workers
    model = fold_batchnorm(opened.model) if options.fold_bn else opened.model
    result = evaluate_dataset(model, data.dataset, data.collate, task, batch_size=batch_size, workers=workers,
                              device=options.device, amp=options.amp, channels_last=options.channels_last,
                              strict=options.strict, progress=options.progress, evaluator=data.evaluator)
    if result is None:
        return None
    out = {"checkpoint": str(checkpoint), "task": task.name, "model": opened.meta.get("model_name"),
           "data": opened.data,
           "split": options.split, "data_dir": opened.data_dir, "epoch": opened.meta.get("epoch"), **data.info,
           "fold_bn": options.fold_bn, **result}
    if data.finish is not None:
        data.finish(out)
    return out
