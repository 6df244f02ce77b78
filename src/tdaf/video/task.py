"""Action recognition (paper §4.4) as a task of the shared trainer.

Cross-entropy on one random clip per video and epoch; at evaluation, clip and video
top-1 / top-5 (the video's clips' softmax scores averaged). The clip length ``T`` is the
model's (its config's ``input_size``, 16 frames for Hara's models), the crop size
``--input-size`` (default: the data set's, 112 for Kinetics).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from ..attention_stats import boxes_to_regions
from ..data import collate_skip, subset_indices
from ..data.registry import dataset_spec
from ..engine.options import CheckpointToEvaluate, EvalData, EvalOptions, PredictOptions
from ..engine.task import AttentionItem, BuiltModel, StepOutput, Task, TaskData, register_task
from ..io.images import collect_images, open_image, unique_stems
from ..io.table import counts_line, topk_table
from ..models import create_model, is_model, model_cfg
from ..models._registry import unknown_model_error
from .data import TASK, VideoClips, build_datasets, open_split
from .io import VideoReadError, count_frames, eval_clip_indices, is_frame_folder, is_video_file, read_frames
from .metrics import VideoEvaluator
from .models import inflate_state_dict
from .predict import VideoList, collect_videos, predict_videos
from .transforms import RECIPES, _ChannelsFirst, _ToClip, clip_transform

__all__ = ["VideoTask", "model_kwargs", "clip_frames", "check_meta"]

log = logging.getLogger("tdaf.train")

_META_KEYS = ("input_size", "mean", "std", "class_names")


def check_meta(meta: dict[str, Any], checkpoint: Any) -> None:
    """ValueError unless ``meta`` has what a video checkpoint written by ``tdaf train`` has."""
    missing = [k for k in _META_KEYS if not meta.get(k)]
    if missing:
        raise ValueError(f"--checkpoint: {checkpoint}: meta lacks {', '.join(missing)}; a video checkpoint written "
                         f"by tdaf train has them")
    if len(meta["input_size"]) != 4:
        raise ValueError(f"--checkpoint: {checkpoint}: input_size {meta['input_size']} is not [C, T, H, W]; is it a "
                         f"video checkpoint?")


def model_kwargs(cfg: Any, num_classes: int) -> dict[str, Any]:
    """Arguments of :func:`tdaf.create_model` that rebuild the trained model."""
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    kwargs.update(cfg.tdaf_kwargs())
    return kwargs


def clip_frames(model_name: str) -> int:
    """The clip length ``T`` a video model takes (its config's ``input_size[1]``)."""
    return int(model_cfg(model_name)["input_size"][1])


_NO_GEOMETRY = (T.ToDtype, T.Normalize)


def _box_geometry(transform: Any) -> T.Compose | None:
    """The spatial part of a clip transform (:func:`tdaf.video.transforms.clip_transform`) to
    apply to boxes: its resizes and centre crops, the very objects (so the same sizes and
    rounding); None when it holds anything else that moves pixels (a random crop, a flip)."""
    steps = getattr(transform, "transforms", None)
    if steps is None:
        return None
    kept = []
    for step in steps:
        if isinstance(step, (T.Resize, T.CenterCrop)):
            kept.append(step)
        elif not isinstance(step, (*_NO_GEOMETRY, _ToClip, _ChannelsFirst)):
            return None
    return T.Compose(kept)


@register_task
class VideoTask(Task):
    """Clip classification with video-level evaluation (Hara et al. 2018; paper Tab. 6)."""

    name = TASK
    main_metric = "video_top1"
    log_metrics = ("loss", "clip_top1", "video_top1", "video_top5")
    train_metrics = ("top1",)
    defaults = {"model": "r3d_resnet10_w16", "data": "moving_digits"}
    labels = {"top1": "clip top-1", "clip_top1": "clip top-1", "video_top1": "video top-1",
              "video_top5": "video top-5"}

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, cfg: Any) -> VideoTask:
        return cls(label_smoothing=cfg.label_smoothing)

    def input_dims(self) -> int:
        return 3

    def check_config(self, cfg: Any, source: str = "config") -> None:
        if not is_model(cfg.model):
            raise ValueError(f"{source}: {unknown_model_error(cfg.model)}")
        mcfg = model_cfg(cfg.model)
        if mcfg.get("task", "classification") != TASK:
            raise ValueError(f"{source}: model: {cfg.model!r} is a {mcfg.get('task', 'classification')} model; the "
                             f"video task takes 3D models (r3d_resnet18 ... r3d_resnet101, tdaf_r3d_*)")
        spec = dataset_spec(cfg.data, TASK, f"{source}: data")
        if cfg.recipe is not None and cfg.recipe not in RECIPES:
            raise ValueError(f"{source}: recipe: got {cfg.recipe!r}; allowed for video: {', '.join(RECIPES)}")
        size = cfg.input_size or spec.defaults["size"]
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_model(cfg.model, num_classes=2, **{k: v for k, v in model_kwargs(cfg, 2).items()
                                                                 if k != "num_classes"})
        need = model.backbone.min_input_size()
        have = (clip_frames(cfg.model), size, size)
        if any(h < n for h, n in zip(have, need)):
            raise ValueError(f"{source}: input_size: clips of T x H x W = {'x'.join(map(str, have))} are too small "
                             f"for {cfg.model}; the minimum is {'x'.join(map(str, need))}")

    def build_data(self, cfg: Any) -> TaskData:
        frames = clip_frames(cfg.model)
        train, val, info = build_datasets(
            cfg.data, cfg.data_dir, frames=frames, input_size=cfg.input_size, recipe=cfg.recipe, seed=cfg.seed,
            train_subset=cfg.train_subset, val_subset=cfg.val_subset,
        )
        if len(info.class_names) < 2:
            log.warning("%s has %d class: a classifier learns nothing from it; check the data folder", cfg.data,
                        len(info.class_names))
        _, t, h, w = info.input_size
        return TaskData(train, val, collate_skip, info.meta(), in_memory=False, unit="clips",
                        description=f"{len(info.class_names)} classes, clips {t}x{h}x{w}, "
                                    f"{info.clips} clips per validation video")

    def build_model(self, cfg: Any, meta: dict[str, Any]) -> BuiltModel:
        kwargs = model_kwargs(cfg, len(meta["class_names"]))
        return BuiltModel(create_model(cfg.model, pretrained=cfg.pretrained, **kwargs), cfg.model, kwargs)

    def adapt_init_state(self, state: dict[str, torch.Tensor], model: nn.Module,
                         source_task: str | None) -> dict[str, torch.Tensor] | None:
        """``--init-from``: a video checkpoint or a 3D state dict as it is; a 2D one (a
        classification checkpoint, plain or TDAF with its ANARs and per-flow statistics,
        or a 2D state dict) inflated to 3D (:func:`tdaf.video.models.inflate_state_dict`)."""
        if source_task not in (None, self.name, "classification"):
            return None
        return inflate_state_dict(state, model)

    def training_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        labels = targets[:, 0]
        out = model(inputs)
        loss = F.cross_entropy(out.float(), labels, label_smoothing=self.label_smoothing)
        hits = (out.detach().argmax(dim=1) == labels).sum()
        return StepOutput(loss, labels.numel(), {"top1": hits})

    def predict(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)

    def evaluator(self) -> VideoEvaluator:
        return VideoEvaluator()

    def attention_regions(self, model: nn.Module, dataset: Any, indices: Sequence[int], inputs: Any,
                          targets: Any) -> torch.Tensor | None:
        """``(B, T, H, W)``: the object's box in every frame of each clip, where the videos'
        folder gives them (the moving digits' ``object_boxes.json``: the moving digit), in the
        clip's frame: the frames the clip reads (looped in a short video) and the boxes taken
        through the clip transform's own resize and crop. A clip whose mapping is not known
        (its video decoded shorter than it claims, or has no boxes) is ignored (-1); None for
        a folder without boxes (Kinetics) or a transform other than resize and centre crop."""
        boxes_of = getattr(getattr(dataset, "folder", None), "object_boxes", None)
        if boxes_of is None or not isinstance(inputs, torch.Tensor) or inputs.dim() != 5 or \
                getattr(dataset, "clips", None) is None:
            return None
        geometry = _box_geometry(getattr(dataset, "transform", None))
        if geometry is None:
            return None
        frames, (h, w) = inputs.shape[2], inputs.shape[-2:]
        looped = targets[:, 2].tolist() if isinstance(targets, torch.Tensor) and targets.dim() == 2 else [0] * len(indices)
        out = torch.full((len(indices), frames, h, w), -1, dtype=torch.int8)
        found = False
        for row, (i, was_looped) in enumerate(zip(indices, looped)):
            video = dataset.video_of(i)
            given = boxes_of(video)
            clip = dataset.frame_indices(i)
            if given is None or clip is None or len(clip) != frames:
                continue
            (fh, fw), boxes = given
            n = dataset.frame_count(video)
            # looped but as long as a clip: it decoded fewer frames than it claims, so which
            # frame the clip shows is not known
            if len(boxes) != n or (was_looped and n >= frames):
                continue
            picked = tv_tensors.BoundingBoxes(torch.tensor([boxes[t] for t in clip], dtype=torch.float32),
                                              format="XYXY", canvas_size=(fh, fw))
            moved = geometry(picked)
            if tuple(moved.canvas_size) != (h, w):
                return None
            out[row] = boxes_to_regions([[b] for b in moved.as_subclass(torch.Tensor).tolist()], (h, w))
            found = True
        return out if found else None

    # ---- tdaf eval and tdaf predict
    @classmethod
    def add_eval_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--clips", type=int, default=None, metavar="K",
                           help="uniformly spaced clips per video, their scores averaged (default: the checkpoint's; "
                                "Kinetics 10, moving digits 3)")

    def eval_data(self, checkpoint: CheckpointToEvaluate, options: EvalOptions) -> EvalData:
        """Clip and video top-1 / top-5 on a split (``clips`` uniformly spaced clips per video,
        default the checkpoint's), preprocessed with the checkpoint's meta; ``subset`` counts videos."""
        clips = options.option("clips")
        if clips is not None and clips < 1:
            raise ValueError(f"--clips: got {clips}; allowed: >= 1")
        data, meta = checkpoint.data, checkpoint.meta
        check_meta(meta, checkpoint.path)
        spec = dataset_spec(data, TASK)
        if options.data_dir is not None and not spec.needs_dir:
            raise ValueError(f"--data-dir: {data} is built in and reads no folder; drop --data-dir")
        raw = open_split(data, options.split, checkpoint.data_dir)
        if raw.classes != list(meta["class_names"]):
            raise ValueError(f"--data: {data} has classes {raw.classes[:5]}... ({len(raw.classes)}), the checkpoint "
                             f"{list(meta['class_names'])[:5]}... ({len(meta['class_names'])}); they must match")
        _, frames, _, size = meta["input_size"]
        clips = int(clips or meta.get("clips") or spec.defaults["clips"])
        dataset = VideoClips(raw, clip_transform("none", size, meta["mean"], meta["std"]), frames, clips,
                             indices=subset_indices(len(raw), options.subset))
        return EvalData(dataset, collate_skip, {"clips_per_video": clips})

    def format_eval(self, result: dict[str, Any]) -> str:
        extra = [f"{result['skipped']} unreadable clips skipped"] if result["skipped"] else []
        if result["looped_videos"]:
            extra.append(f"{result['looped_videos']} short videos looped")
        return (f"{result['model']} on {result['data']}/{result['split']} ({result['videos']} videos, "
                f"{result['clips']} clips, {result['clips_per_video']} per video{''.join(', ' + e for e in extra)}): "
                f"clip top-1 {result['clip_top1']:.4f}  top-5 {result['clip_top5']:.4f} | video top-1 "
                f"{result['video_top1']:.4f}  top-5 {result['video_top5']:.4f}  loss {result['loss']:.4f}")

    @classmethod
    def add_predict_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--clips-per-video", type=int, default=None, metavar="K",
                           help="uniformly spaced clips per video, their scores averaged (default: the checkpoint's); "
                                "the inputs are then video files (.mp4 ...) or frame folders (image_00001.jpg ...)")

    def predict_inputs(self, paths: Sequence[str | os.PathLike[str]]) -> VideoList:
        return collect_videos(paths)

    def run_predictions(self, model: nn.Module, meta: dict[str, Any], inputs: VideoList,
                        options: PredictOptions) -> dict[str, Any]:
        """The top-5 actions of each video, from the softmax scores averaged over its clips."""
        check_meta(meta, options.checkpoint)
        clips = options.option("clips_per_video", int(meta.get("clips") or 1))
        if clips < 1:
            raise ValueError(f"--clips-per-video: got {clips}; allowed: >= 1")
        names = [str(n) for n in meta["class_names"]]
        _, frames, _, size = meta["input_size"]
        results, skipped = predict_videos(
            model, inputs, clip_transform("none", size, meta["mean"], meta["std"]), names, frames=frames,
            clips=clips, topk=5, batch_size=options.batch_size, device=options.device)
        return {"topk": min(5, len(names)), "clips_per_video": clips, "clip": [frames, size, size],
                "results": results, "skipped": skipped}

    def format_predictions(self, report: dict[str, Any], options: PredictOptions) -> str:
        lines = [topk_table(report["results"], report["topk"], "video")] if report["results"] else []
        counts = counts_line([f"{len(report['results'])} video(s)"], len(report["skipped"]), report["ignored"],
                             "unreadable")
        looped = sum(r["looped"] for r in report["results"])
        if looped:
            counts += f", {looped} shorter than a clip (looped)"
        frames, h, w = report["clip"]
        return "\n".join(lines + [
            f"{counts}; {options.described}, {report['clips_per_video']} clip(s) of {frames}x{h}x{w} per video, "
            f"scores are softmax probabilities averaged over the clips"])

    # --- attention / export / profile
    def example_size(self, meta: Mapping[str, Any], given: Sequence[int] | None = None) -> list[int]:
        """``[C, T, H, W]``: the model's clip, or ``--input-size T H W``, or ``--input-size
        H W`` (one number: a square) with the model's clip length T."""
        size = [int(s) for s in meta["input_size"]]
        if not given:
            return size
        if not 1 <= len(given) <= 3 or any(int(v) < 1 for v in given):
            raise ValueError(f"--input-size: got {' '.join(map(str, given))}; allowed for a video model: T H W, or "
                             f"H W (or H, a square) with the model's {size[1]} frames, positive integers")
        if len(given) == 3:
            return [size[0], *(int(v) for v in given)]
        return [size[0], size[1], int(given[0]), int(given[-1])]

    def attention_items(self, paths: Sequence[str], meta: Mapping[str, Any],
                        person_boxes: str | None = None) -> list[AttentionItem]:
        """Video files (.mp4 ...) and Hara frame folders (``image_00001.jpg`` ...), named or
        found in the folders named, one clip of the model's T frames each (uniformly spaced
        over the video, as ``tdaf predict`` takes them); otherwise the image files given
        (or found in the folders given) are the frames of one clip, in order."""
        try:
            videos = collect_videos(paths)
        except ValueError as video_error:
            try:
                images = collect_images(paths)
            except ValueError as image_error:
                raise ValueError(f"{image_error}; nor a video: {video_error}") from None
            return [AttentionItem(f"{unique_stems(images.files[:1])[0]}_clip", list(images.files),
                                  frames=len(images.files))]
        frames = int(meta["input_size"][1])
        return [AttentionItem(stem, [path], from_folder, frames)
                for path, from_folder, stem in zip(videos.files, videos.from_folder, unique_stems(videos.files))]

    def attention_input(self, item: AttentionItem, meta: Mapping[str, Any],
                        size: Sequence[int] | None = None) -> torch.Tensor:
        """One clip ``(1, C, T, H, W)``: T frames of a video (uniformly spaced, looped when the
        video is shorter) or the item's image files, each resized (shorter side) and
        centre-cropped to the model's H x W as ``tdaf eval`` does, or resized straight to
        ``size``'s H x W; normalised with the checkpoint's mean and std."""
        path = item.paths[0]
        if len(item.paths) == 1 and (is_video_file(path) or is_frame_folder(path)):
            try:
                t = int((size or meta["input_size"])[1])
                frames, _ = read_frames(path, eval_clip_indices(count_frames(path), t, 1)[0])
            except (VideoReadError, OSError) as e:
                raise ValueError(str(e)) from None
            video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
        else:
            pictures = [TF.pil_to_tensor(open_image(p)) for p in item.paths]
            if len({p.shape for p in pictures}) > 1:  # frames of several sizes: each to the first's
                pictures = [TF.resize(p, list(pictures[0].shape[-2:]), antialias=True) for p in pictures]
            video = torch.stack(pictures)
        x = TF.to_dtype(video, torch.float32, scale=True)
        if size:
            x = TF.resize(x, [int(s) for s in size[-2:]], antialias=True)
        else:
            crop = int(meta["input_size"][-1])
            x = TF.center_crop(TF.resize(x, crop, antialias=True), [int(meta["input_size"][-2]), crop])
        x = TF.normalize(x, list(meta["mean"]), list(meta["std"]))
        return x.permute(1, 0, 2, 3)[None]  # (1, C, T, H, W)
