"""COCO keypoint evaluation of a pose checkpoint (paper Tab. 5): ground-truth boxes, or a
detector's boxes (the Faster-RCNN / YOLOv3 columns) with OKS NMS."""

from __future__ import annotations

import os
from typing import Any

from ..data.registry import dataset_spec
from ..engine.evaluate import evaluate_dataset, open_checkpoint
from .data import TASK, KeypointInfo, annotation_file, CocoPersons, describe_drops, pose_collate
from .task import PoseTask, build_pose_data

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "val",
    boxes: str | os.PathLike[str] | None = None,
    score_thr: float = 0.0,
    flip_test: bool = True,
    subset: int | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    amp: bool = False,
    channels_last: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """AP, AP50, AP75, AP_M, AP_L, AR (COCOeval, keypoints) of a pose checkpoint on a split,
    with the checkpoint's crop size and normalisation. ``boxes``: a COCO detection results
    json (person boxes scoring above ``score_thr``, then OKS NMS); None: ground-truth boxes.
    Returns the result on the main process (None on the others under ``torchrun``)."""
    if not 0.0 <= score_thr < 1.0:
        raise ValueError(f"--person-score-thr: got {score_thr}; allowed: a number in [0, 1)")
    opened = open_checkpoint(checkpoint, data, batch_size)
    model, meta, data = opened.model, opened.meta, opened.data
    spec = dataset_spec(data, TASK)
    if spec.needs_dir:
        if data_dir is None:
            raise ValueError(f"--data-dir: evaluating on {data} needs its folder")
        ann, images = annotation_file(data_dir, split)
        raw = CocoPersons(ann, images, boxes="gt" if boxes is None else str(boxes), score_thr=score_thr,
                          strict=strict)
    else:  # a bundled set: where the run wrote it (its data_dir, else the default), written if missing
        cfg = opened.payload.get("config", {})
        if data_dir is None and cfg.get("data") == data:
            data_dir = cfg.get("data_dir")
        raw = spec.open(split, data_dir)
        ann = raw.ann_file
        if boxes is not None:
            raw = CocoPersons(ann, raw.image_dir, boxes=str(boxes), score_thr=score_thr, strict=strict)
    trained = KeypointInfo.from_meta(meta)
    if raw.info.names != trained.names:
        raise ValueError(f"--data-dir: {ann} names {len(raw.info.names)} keypoints ({', '.join(raw.info.names[:3])}, "
                         f"...), the checkpoint was trained on {len(trained.names)} ({', '.join(trained.names[:3])}, ...)")
    hw = (int(meta["input_size"][1]), int(meta["input_size"][2]))
    _, dataset = build_pose_data(None, raw, hw, meta["mean"], meta["std"], val_subset=subset)
    img_ids = None if subset is None else sorted({raw.instances[i]["image_id"] for i in dataset.indices})
    task = PoseTask(flip_test=flip_test)
    task.set_eval_data(raw, img_ids, nms=boxes is not None)
    result = evaluate_dataset(model, dataset, pose_collate, task, batch_size=batch_size,
                              workers=workers, device=device, amp=amp,
                              channels_last=channels_last, strict=strict, progress=progress)
    if result is None:
        return None
    return {"checkpoint": str(checkpoint), "model": meta.get("model_name"), "data": data, "split": split,
            "boxes": "ground truth" if boxes is None else str(boxes), "flip_test": flip_test,
            "epoch": meta.get("epoch"), "dropped": {k: len(v) for k, v in raw.dropped.items()},
            "dropped_summary": describe_drops(raw), **result}
