"""The video parts of ``tdaf eval`` and ``tdaf predict`` (an action-recognition checkpoint)."""

from __future__ import annotations

import argparse
import json

from ..cli._common import resolve_device
from ..cli._load import load_model
from ..cli._table import topk_table
from ..io.files import json_safe
from .evaluate import check_meta, evaluate_checkpoint
from .predict import collect_videos, predict_videos
from .transforms import clip_transform

__all__ = ["EVAL_OPTIONS", "PREDICT_OPTIONS", "add_eval_args", "add_predict_args", "run_eval", "run_predict"]

# The flags below (by argparse dest), refused for checkpoints of other tasks.
EVAL_OPTIONS = ("clips",)
PREDICT_OPTIONS = ("clips_per_video",)


def add_eval_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--clips", type=int, default=None, metavar="K",
                   help="uniformly spaced clips per video, their scores averaged (default: the checkpoint's; "
                        "Kinetics 10, moving digits 3)")


def add_predict_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--clips-per-video", type=int, default=None, metavar="K",
                   help="uniformly spaced clips per video, their scores averaged (default: the checkpoint's); "
                        "the images are then video files (.mp4 ...) or frame folders (image_00001.jpg ...)")


def run_eval(args: argparse.Namespace) -> int:
    """``tdaf eval`` of a video checkpoint: clip and video top-1 / top-5."""
    out = evaluate_checkpoint(
        args.checkpoint, args.data, args.data_dir, split=args.split, subset=args.subset, clips=args.clips,
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp,
        channels_last=args.channels_last, strict=args.strict, progress=args.progress and not args.json,
    )
    if out is None:
        return 0
    if args.json:
        print(json.dumps(json_safe(out), allow_nan=False))
    else:
        extra = [f"{out['skipped']} unreadable clips skipped"] if out["skipped"] else []
        if out["looped_videos"]:
            extra.append(f"{out['looped_videos']} short videos looped")
        print(f"{out['model']} on {out['data']}/{args.split} ({out['videos']} videos, {out['clips']} clips, "
              f"{out['clips_per_video']} per video{''.join(', ' + e for e in extra)}): "
              f"clip top-1 {out['clip_top1']:.4f}  top-5 {out['clip_top5']:.4f} | video top-1 {out['video_top1']:.4f}  "
              f"top-5 {out['video_top5']:.4f}  loss {out['loss']:.4f}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """``tdaf predict`` with a video checkpoint: the top-5 actions of each video."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: got {args.batch_size}; allowed: >= 1")
    device = resolve_device(args.device)
    videos = collect_videos(args.images)
    loaded = load_model(args)
    meta = loaded.meta
    check_meta(meta, args.checkpoint)
    clips = args.clips_per_video if args.clips_per_video is not None else int(meta.get("clips") or 1)
    if clips < 1:
        raise ValueError(f"--clips-per-video: got {clips}; allowed: >= 1")
    names = [str(n) for n in meta["class_names"]]
    _, frames, _, size = meta["input_size"]
    results, skipped = predict_videos(
        loaded.model, videos, clip_transform("none", size, meta["mean"], meta["std"]), names, frames=frames,
        clips=clips, topk=5, batch_size=args.batch_size, device=device)
    k = min(5, len(names))
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "model": loaded.name, "topk": k, "results": results,
                          "skipped": skipped, "ignored": videos.ignored}))
        return 0
    if results:
        print(topk_table(results, k, "video"))
    counts = [f"{len(results)} video(s)"]
    if skipped:
        counts.append(f"{len(skipped)} unreadable skipped")
    looped = sum(r["looped"] for r in results)
    if looped:
        counts.append(f"{looped} shorter than a clip (looped)")
    print(f"{', '.join(counts)}; {loaded.describe()}, {clips} clip(s) of {frames}x{size}x{size} per video, "
          f"scores are softmax probabilities averaged over the clips")
    return 0
