"""``tdaf predict``: a trained model on image files and folders (the task's part: ``tdaf.<task>.cli``)."""

from __future__ import annotations

import argparse

from ._common import add_device_arg, add_overwrite_arg, add_progress_arg, add_threads_arg, apply_threads
from ._load import add_model_args
from ._tasks import add_task_args, run_task_command


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predictions of a trained model for images (top-k labels of a classifier)",
        description="Run a checkpoint written by `tdaf train` on image files, or every image in folders "
        "(searched recursively); the task is the checkpoint's (classification: the top-k labels). Images "
        "are preprocessed exactly as `tdaf eval` does (the checkpoint's input size, resize/crop, mean and std); "
        "any PIL mode is converted to RGB (greyscale, "
        "palette, RGBA without its alpha, 16-bit scaled to 8 bits). A file named on the command line that is "
        "not an image is an error; inside folders, non-image files are ignored and undecodable images are "
        "skipped, and both are counted. Scores are softmax probabilities.",
        epilog="example: tdaf predict --checkpoint runs/digits/best.pt photos/ cat.png --topk 3 --json",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders")
    add_model_args(p, allow_name=False)
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding worker processes (default: automatic, in-process for small jobs)")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with all results instead of a table")
    add_progress_arg(p)
    add_threads_arg(p)
    add_overwrite_arg(p, "replace existing files in --out-dir / --skeleton-out (pictures, predictions.json); "
                      "never an input image or the checkpoint")
    add_task_args(p, "predict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    return run_task_command("predict", args)
