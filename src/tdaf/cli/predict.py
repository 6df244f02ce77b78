"""``tdaf predict``: a trained model on image files and folders (or videos), for every task
(the task's part: its ``Task.add_predict_args``, ``predict_inputs``, ``run_predictions``,
``format_predictions`` and ``draw_prediction``)."""

from __future__ import annotations

import argparse
import json

from ..engine.options import PredictOptions
from ..inference import fold_batchnorm
from ..io.files import json_safe
from ._common import (
    add_device_arg, add_fold_bn_arg, add_overwrite_arg, add_progress_arg, add_threads_arg, apply_threads,
    resolve_device,
)
from ._load import add_model_args, load_model
from ._task_args import add_task_args, task_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predictions of a trained model for images (top-k labels of a classifier)",
        description="Run a checkpoint written by `tdaf train` on image files, or every image in folders "
        "(searched recursively); the task is the checkpoint's: classification the top-k labels, detection boxes, "
        "pose the joints of each person, video the top-5 actions of video files and frame folders. Images "
        "are preprocessed exactly as `tdaf eval` does (the checkpoint's input size, resize/crop, mean and std); "
        "any PIL mode is converted to RGB (greyscale, "
        "palette, RGBA without its alpha, 16-bit scaled to 8 bits). A file named on the command line that is "
        "not an image is an error; inside folders, non-image files are ignored and undecodable images are "
        "skipped, and both are counted. Scores are softmax probabilities.",
        epilog="example: tdaf predict --checkpoint runs/digits/best.pt photos/ cat.png --topk 3 --json",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders (video: videos, frame folders)")
    add_model_args(p, allow_name=False)
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding worker processes (default: automatic, in-process for small jobs)")
    add_device_arg(p)
    add_fold_bn_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with all results instead of a table")
    add_progress_arg(p)
    add_threads_arg(p)
    add_overwrite_arg(p, "replace existing files in --out-dir / --skeleton-out (pictures, predictions.json); "
                      "never an input image or the checkpoint")
    add_task_args(p, "predict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: got {args.batch_size}; allowed: >= 1")
    device = resolve_device(args.device)
    loaded = load_model(args)  # the checkpoint, read once: its model and its task
    task = loaded.task_object()
    own = task_options(args, "predict", task, args.checkpoint)
    inputs = task.predict_inputs(args.images)
    model = fold_batchnorm(loaded.model) if args.fold_bn else loaded.model
    options = PredictOptions(checkpoint=str(args.checkpoint), device=device, batch_size=args.batch_size,
                             workers=args.workers, progress=args.progress, overwrite=args.overwrite,
                             described=loaded.describe(), task=own)
    report = task.run_predictions(model, loaded.meta, inputs, options)
    report["ignored"] = inputs.ignored
    if args.json:
        print(json.dumps(json_safe({"checkpoint": str(args.checkpoint), "model": loaded.name, **report})))
    else:
        print(task.format_predictions(report, options))
    return 0
