"""Evaluation of a classifier: top-1 / top-5 on 1 crop or the 10-crop test (paper §4.1, Tab. 3a)."""

from __future__ import annotations

import os
from typing import Any

from ..data import TransformedDataset, collate_skip, subset_indices
from ..data.registry import dataset_spec
from ..engine.evaluate import evaluate_dataset, open_checkpoint
from .data import TASK, eval_transform, open_split, ten_crop_transform
from .task import ClassificationTask

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "val",
    subset: int | None = None,
    batch_size: int = 100,
    ten_crop: bool = False,
    workers: int | None = None,
    device: str = "auto",
    amp: bool = False,
    channels_last: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Top-1 / top-5 of a classification checkpoint on a data set split, preprocessed with the
    checkpoint's own meta (input size, mean/std, resize). Returns the result on the main
    process (None on the others when run under ``torchrun``)."""
    opened = open_checkpoint(checkpoint, data, batch_size)
    model, meta, data = opened.model, opened.meta, opened.data
    spec = dataset_spec(data, TASK)
    if data_dir is not None and not spec.needs_dir:
        raise ValueError(f"--data-dir: {data} is built in and reads no folder; drop --data-dir")
    raw = open_split(data, split, data_dir)
    outputs = getattr(model, "num_classes", None)
    classes = list(meta.get("class_names") or [])
    if isinstance(outputs, int) and outputs != len(raw.classes):
        raise ValueError(f"--data: {data} has {len(raw.classes)} classes, but the checkpoint's model has "
                         f"{outputs} outputs")
    if classes and classes != raw.classes:
        diff = next(i for i, (a, b) in enumerate(zip(classes, raw.classes)) if a != b)
        raise ValueError(f"--data: class {diff} is {raw.classes[diff]!r} here but {classes[diff]!r} in the "
                         f"checkpoint; the data's class folders must match the training data")
    transform = ten_crop_transform(meta) if ten_crop else eval_transform(meta)
    dataset = TransformedDataset(raw, transform, indices=subset_indices(len(raw), subset), seeded=False)
    if workers is None and not spec.needs_dir:
        workers = 0  # held in memory: starting workers costs more than they save
    result = evaluate_dataset(model, dataset, collate_skip, ClassificationTask(ten_crop=ten_crop),
                              batch_size=batch_size, workers=workers, device=device, amp=amp,
                              channels_last=channels_last, strict=strict, progress=progress)
    if result is None:
        return None
    return {"checkpoint": str(checkpoint), "model": meta.get("model_name"), "data": data, "split": split,
            "crops": 10 if ten_crop else 1, "epoch": meta.get("epoch"), **result}
