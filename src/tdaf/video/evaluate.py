"""Evaluation of an action classifier: clip and video top-1 / top-5 (paper §4.4, Tab. 6)."""

from __future__ import annotations

import os
from typing import Any

from ..data import collate_skip, subset_indices
from ..data.registry import dataset_spec
from ..engine.evaluate import evaluate_dataset, open_checkpoint
from .data import TASK, VideoClips, open_split
from .task import VideoTask
from .transforms import clip_transform

__all__ = ["evaluate_checkpoint", "check_meta"]

_META_KEYS = ("input_size", "mean", "std", "class_names")


def check_meta(meta: dict[str, Any], checkpoint: Any) -> None:
    missing = [k for k in _META_KEYS if not meta.get(k)]
    if missing:
        raise ValueError(f"--checkpoint: {checkpoint}: meta lacks {', '.join(missing)}; a video checkpoint written "
                         f"by tdaf train has them")
    if len(meta["input_size"]) != 4:
        raise ValueError(f"--checkpoint: {checkpoint}: input_size {meta['input_size']} is not [C, T, H, W]; is it a "
                         f"video checkpoint?")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "val",
    subset: int | None = None,
    clips: int | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    amp: bool = False,
    channels_last: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Clip and video top-1 / top-5 of a video checkpoint on a split (``clips`` uniformly spaced
    clips per video, default the checkpoint's), preprocessed with the checkpoint's meta.
    ``subset`` counts videos. Returns the result on the main process (None on the others)."""
    if clips is not None and clips < 1:
        raise ValueError(f"--clips: got {clips}; allowed: >= 1")
    opened = open_checkpoint(checkpoint, data, batch_size)
    model, meta, data = opened.model, opened.meta, opened.data
    check_meta(meta, checkpoint)
    spec = dataset_spec(data, TASK)
    raw = open_split(data, split, data_dir)
    if raw.classes != list(meta["class_names"]):
        raise ValueError(f"--data: {data} has classes {raw.classes[:5]}... ({len(raw.classes)}), the checkpoint "
                         f"{list(meta['class_names'])[:5]}... ({len(meta['class_names'])}); they must match")
    _, frames, _, size = meta["input_size"]
    clips = int(clips or meta.get("clips") or spec.defaults["clips"])
    dataset = VideoClips(raw, clip_transform("none", size, meta["mean"], meta["std"]), frames, clips,
                         indices=subset_indices(len(raw), subset))
    result = evaluate_dataset(model, dataset, collate_skip, VideoTask(), batch_size=batch_size,
                              workers=workers, device=device, amp=amp,
                              channels_last=channels_last, strict=strict, progress=progress)
    if result is None:
        return None
    return {"checkpoint": str(checkpoint), "model": meta.get("model_name"), "data": data, "split": split,
            "clips_per_video": clips, "epoch": meta.get("epoch"), **result}
