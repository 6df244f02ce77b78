"""``tdaf eval`` of a detector: COCOeval box AP on a split, and the detections as COCO json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..data import TransformedDataset, subset_indices
from ..data.registry import dataset_spec
from ..engine.evaluate import evaluate_dataset, open_checkpoint
from ..io.outputs import Outputs
from .data import apply_pair, collate_detection, eval_transform
from .metrics import CocoEvaluator
from .models import TASK
from .task import DetectionTask, open_split

__all__ = ["evaluate_checkpoint", "default_data_dir"]


def default_data_dir(ckpt: dict[str, Any], data: str) -> str | None:
    """Where the run that wrote ``ckpt`` read ``data``: its ``data_dir``, or for a bundled set
    the copy it wrote under its ``out`` folder (when it is still there)."""
    cfg = ckpt.get("config", {})
    if cfg.get("data") != data:
        return None
    if cfg.get("data_dir"):
        return str(cfg["data_dir"])
    if not dataset_spec(data, TASK).needs_dir and cfg.get("out"):
        built = Path(cfg["out"]).expanduser() / "data" / data
        return str(built) if built.is_dir() else None
    return None


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "val",
    subset: int | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    device: str = "auto",
    amp: bool = False,
    strict: bool = False,
    progress: bool = True,
    detections: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """AP, AP50, AP75, AP_S, AP_M, AP_L (COCOeval, fractions) of a detection checkpoint on a
    split; the detections are written as COCO result json to ``detections`` (default: beside
    the checkpoint, ``detections_<data>_<split>.json``), never over an input of the run (the
    checkpoint, the annotations, the images) nor, without ``overwrite``, over an existing
    file; it is checked before the evaluation and written after it. None on processes other
    than the main one."""
    opened = open_checkpoint(checkpoint, data, batch_size)
    model, meta, data = opened.model, opened.meta, opened.data
    dataset_spec(data, TASK, "--data")  # a clear error for a data set of another task
    data_dir = str(data_dir) if data_dir is not None else default_data_dir(opened.payload, data)
    raw = open_split(data, split, data_dir)
    raw.strict = strict
    if raw.num_classes > model.head.classification_head.num_classes:
        raise ValueError(f"--data: {data} has category ids up to {raw.num_classes - 1}, but the checkpoint's "
                         f"model has {model.head.classification_head.num_classes} classes")
    out = Path(detections) if detections is not None else \
        Path(checkpoint).parent / f"detections_{data}_{split}.json"
    outputs = Outputs(overwrite=overwrite)
    outputs.protect([checkpoint], "checkpoint")
    outputs.protect([raw.ann_file], "annotations")
    outputs.protect((raw.image_dir / im["file_name"] for im in raw.images.values()), "image")
    outputs.claim(out, "--detections")
    dataset = TransformedDataset(raw, apply_pair(eval_transform()), indices=subset_indices(len(raw), subset),
                                 seeded=False)
    evaluator = CocoEvaluator(raw.gt)
    task = DetectionTask()
    task.evaluator = lambda: evaluator  # type: ignore[method-assign]  (keep it: its detections are written)
    result = evaluate_dataset(model, dataset, collate_detection, task, batch_size=batch_size,
                              workers=workers, device=device,
                              amp=amp, strict=strict, progress=progress)
    if result is None:
        return None
    with outputs:
        outputs.write_text(json.dumps(evaluator.detections), out)
    result.update(model=meta.get("model_name"), data=data, split=split, detections=str(out),
                  detections_count=len(evaluator.detections))
    return result

