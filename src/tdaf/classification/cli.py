"""The classification parts of ``tdaf eval`` and ``tdaf predict`` (a classifier checkpoint)."""

from __future__ import annotations

import argparse
import json
import logging

from ..cli._common import resolve_device
from ..cli._load import load_model
from ..cli._table import topk_table
from ..io.files import json_safe
from ..io.images import collect_images
from .data import eval_transform
from .evaluate import evaluate_checkpoint
from .predict import predict

__all__ = ["EVAL_OPTIONS", "PREDICT_OPTIONS", "add_eval_args", "add_predict_args", "run_eval", "run_predict"]

log = logging.getLogger("tdaf.predict")

# The flags below (by argparse dest), refused for checkpoints of other tasks.
EVAL_OPTIONS = ("ten_crop",)
PREDICT_OPTIONS = ("topk",)


def add_eval_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--ten-crop", action="store_true", default=None,
                   help="10-crop test (corners + centre, and mirrors; paper Tab. 3a)")


def add_predict_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--topk", type=int, default=None, help="labels per image (default 5; capped at the class count)")


def run_eval(args: argparse.Namespace) -> int:
    """``tdaf eval`` of a classifier: top-1 / top-5 and loss."""
    out = evaluate_checkpoint(
        args.checkpoint, args.data, args.data_dir, split=args.split, subset=args.subset, batch_size=args.batch_size,
        ten_crop=bool(args.ten_crop), workers=args.workers, device=args.device, amp=args.amp,
        channels_last=args.channels_last, strict=args.strict, progress=args.progress and not args.json,
    )
    if out is None:  # not the main process
        return 0
    if args.json:
        print(json.dumps(json_safe(out), allow_nan=False))
    else:
        print(f"{out['model']} on {out['data']}/{args.split} ({out['images']} images, {out['crops']}-crop"
              f"{', %d unreadable skipped' % out['skipped'] if out['skipped'] else ''}): "
              f"top-1 {out['top1']:.4f}  top-5 {out['top5']:.4f}  loss {out['loss']:.4f}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """``tdaf predict`` with a classifier: the top-k labels of each image."""
    args.topk = 5 if args.topk is None else args.topk
    if args.topk < 1:
        raise ValueError(f"--topk: got {args.topk}; allowed: >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: got {args.batch_size}; allowed: >= 1")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers: got {args.workers}; allowed: >= 0")
    device = resolve_device(args.device)
    images = collect_images(args.images)
    workers = args.workers if args.workers is not None else (2 if len(images) > 256 else 0)
    loaded = load_model(args)
    if not loaded.is_classifier:
        raise ValueError(
            f"--checkpoint: {args.checkpoint} holds {loaded.name}, which is not a classifier; "
            f"tdaf predict needs a classification checkpoint"
        )
    num_classes = loaded.model.num_classes
    names = loaded.meta.get("class_names")
    if names is None:
        log.warning("the checkpoint names no classes; labels are class indices")
        names = [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(
            f"--checkpoint: {args.checkpoint} names {len(names)} classes but its model has {num_classes} outputs"
        )
    transform = eval_transform(loaded.meta)
    results, skipped = predict(
        loaded.model, images, transform, [str(n) for n in names], topk=args.topk, batch_size=args.batch_size,
        workers=workers, device=device, progress=args.progress,
    )
    k = min(args.topk, num_classes)
    if args.json:
        print(json.dumps({
            "checkpoint": str(args.checkpoint), "model": loaded.name, "topk": k, "results": results,
            "skipped": skipped, "ignored": images.ignored,
        }))
        return 0
    if results:
        print(topk_table(results, k))
    counts = [f"{len(results)} image(s)"]
    if skipped:
        counts.append(f"{len(skipped)} undecodable skipped")
    if images.ignored:
        counts.append(f"{images.ignored} non-image file(s) ignored")
    print(f"{', '.join(counts)}; {loaded.describe()}, scores are softmax probabilities")
    return 0
