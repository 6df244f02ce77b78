"""``tdaf predict``: top-k labels of a trained classifier for image files and folders."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..classification.data import eval_transform
from ..classification.predict import predict
from ..io.images import collect_images
from ._table import format_table
from ._load import add_device_arg, add_model_args, load_model, resolve_device

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k labels of a trained classifier for images",
        description="Classify image files, or every image in folders (searched recursively), with a classifier "
        "checkpoint written by `tdaf train`. Images are preprocessed exactly as `tdaf eval` does (the "
        "checkpoint's input size, resize/crop, mean and std); any PIL mode is converted to RGB (greyscale, "
        "palette, RGBA without its alpha, 16-bit scaled to 8 bits). A file named on the command line that is "
        "not an image is an error; inside folders, non-image files are ignored and undecodable images are "
        "skipped, and both are counted. Scores are softmax probabilities.",
        epilog="example: tdaf predict --checkpoint runs/digits/best.pt photos/ cat.png --topk 3 --json",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders")
    add_model_args(p, allow_name=False)
    p.add_argument("--topk", type=int, default=5, help="labels per image (default 5; capped at the class count)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default 0: in-process)")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with all results instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _table(results: list[dict[str, Any]], k: int) -> str:
    head = ["file"] + [f"top-{j + 1}" for j in range(k)]
    return format_table(head, [[r["file"]] + [f"{t['label']}:{t['score']:.3f}" for t in r["topk"]] for r in results])


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise ValueError(f"--topk: got {args.topk}; allowed: >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: got {args.batch_size}; allowed: >= 1")
    if args.workers < 0:
        raise ValueError(f"--workers: got {args.workers}; allowed: >= 0")
    device = resolve_device(args.device)
    images = collect_images(args.images)
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
        workers=args.workers, device=device, progress=not args.no_progress,
    )
    k = min(args.topk, num_classes)
    if args.json:
        print(json.dumps({
            "checkpoint": str(args.checkpoint), "model": loaded.name, "topk": k, "results": results,
            "skipped": skipped, "ignored": images.ignored,
        }))
        return 0
    if results:
        print(_table(results, k))
    counts = [f"{len(results)} image(s)"]
    if skipped:
        counts.append(f"{len(skipped)} undecodable skipped")
    if images.ignored:
        counts.append(f"{images.ignored} non-image file(s) ignored")
    print(f"{', '.join(counts)}; {loaded.describe()}, scores are softmax probabilities")
    return 0
