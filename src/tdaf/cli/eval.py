"""``tdaf eval``: a checkpoint's metrics on a data set split, for every task (the task's part:
its ``Task.add_eval_args``, ``eval_data`` and ``format_eval``)."""

from __future__ import annotations

import argparse
import json

from ..engine.evaluate import EvalOptions, evaluate_checkpoint
from ..io.files import json_safe
from ._common import (
    add_amp_arg, add_channels_last_arg, add_device_arg, add_fold_bn_arg, add_overwrite_arg, add_progress_arg,
    add_threads_arg, apply_threads,
)
from ..engine.task import get_task
from ._task_args import add_task_args, given_options

_BOOL = argparse.BooleanOptionalAction


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint on a data set split (the metrics of its task)",
        description="Evaluate a tdaf checkpoint on a data set split with the checkpoint's own preprocessing "
        "(input size, mean/std, resize) and its task's metrics: classification top-1 / top-5 (--ten-crop: the "
        "10-crop test of the paper's Tab. 3a), detection COCO box AP, pose COCO keypoint AP, video clip and "
        "video top-1 / top-5. The task is the checkpoint's; the data is the one it was trained on, read from "
        "where its run read it (recorded in the checkpoint) unless --data / --data-dir say otherwise.",
        epilog="example: tdaf eval --checkpoint runs/d/best.pt --json",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by tdaf train")
    p.add_argument("--data", metavar="NAME", default=None,
                   help="a data set of the checkpoint's task (default: the one it was trained on)")
    p.add_argument("--data-dir", metavar="PATH", default=None,
                   help="the data set's folder (default: the one the checkpoint's run read, recorded in it)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="split to evaluate (default val)")
    p.add_argument("--subset", type=int, metavar="N", default=None,
                   help="a fixed random subset of N samples (images, persons, videos)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per batch (default: the task's; classification 100, detection 8, pose and video 32)")
    p.add_argument("--workers", type=int, default=None, help="data loader processes (default: automatic)")
    add_device_arg(p)
    add_threads_arg(p)
    add_amp_arg(p)
    add_channels_last_arg(p)
    add_fold_bn_arg(p)
    p.add_argument("--strict", action=_BOOL, default=False, help="stop at the first unreadable input (default off)")
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (metrics as fractions in [0, 1])")
    add_overwrite_arg(p, "replace an existing file this command writes (detections json); never an input")
    add_task_args(p, "eval")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    options = EvalOptions(
        data=args.data, data_dir=args.data_dir, split=args.split, subset=args.subset, batch_size=args.batch_size,
        workers=args.workers, device=args.device, amp=args.amp, channels_last=args.channels_last, strict=args.strict,
        fold_bn=args.fold_bn, progress=False if args.json else args.progress, overwrite=args.overwrite,
        task=given_options(args, "eval"),
    )
    result = evaluate_checkpoint(args.checkpoint, options)
    if result is None:  # not the main process
        return 0
    if args.json:
        print(json.dumps(json_safe(result), allow_nan=False))
    else:
        print(get_task(result["task"])().format_eval(result))
    return 0
