"""The pose parts of ``tdaf eval`` and ``tdaf predict`` (a pose checkpoint)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..cli._common import resolve_device
from ..cli._load import load_model
from ..cli._table import format_table
from ..io.files import json_safe
from ..io.images import collect_images, unique_stems
from ..io.outputs import Outputs, output_name
from .evaluate import evaluate_checkpoint
from .metrics import STAT_NAMES
from .predict import pose_picture, predict_poses, read_box_file

__all__ = ["EVAL_OPTIONS", "PREDICT_OPTIONS", "add_eval_args", "add_predict_args", "run_eval", "run_predict"]

log = logging.getLogger("tdaf.predict")

# The flags below (by argparse dest), refused for checkpoints of other tasks.
EVAL_OPTIONS = ("person_boxes", "person_score_thr", "no_flip_test")
PREDICT_OPTIONS = ("person_boxes", "skeleton_out", "no_flip_test")


def add_eval_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--person-boxes", metavar="JSON", default=None,
                   help="a detector's COCO results json (Faster-RCNN / YOLO boxes; OKS NMS applies); "
                   "default: ground-truth boxes")
    g.add_argument("--person-score-thr", type=float, default=None,
                   help="with --person-boxes: keep boxes scoring above this (default 0.0, the reference's)")
    g.add_argument("--no-flip-test", action="store_true", default=None, help="no flip test (default: flip test on)")


def add_predict_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--person-boxes", metavar="JSON", default=None,
                   help='person boxes per image: {"img.jpg": [[x, y, w, h(, score)], ...]}; default: the whole image')
    g.add_argument("--skeleton-out", metavar="DIR", default=None,
                   help="write each image with its skeletons here, as <image>_skeleton.png (may be the image folder: "
                        "inputs are never written over, existing files only with --overwrite)")
    g.add_argument("--no-flip-test", action="store_true", default=None, help="no flip test (default: flip test on)")


def run_eval(args: argparse.Namespace) -> int:
    """``tdaf eval`` of a pose model: COCO keypoint AP with ground-truth or detector boxes."""
    if args.person_score_thr is not None and args.person_boxes is None:
        raise ValueError("--person-score-thr: only with --person-boxes (ground-truth boxes have no score)")
    out = evaluate_checkpoint(
        args.checkpoint, args.data, args.data_dir, split=args.split, boxes=args.person_boxes,
        score_thr=0.0 if args.person_score_thr is None else args.person_score_thr,
        flip_test=not args.no_flip_test, subset=args.subset, batch_size=args.batch_size, workers=args.workers,
        device=args.device, amp=args.amp, channels_last=args.channels_last, strict=args.strict,
        progress=args.progress and not args.json,
    )
    if out is None:
        return 0
    if args.json:
        print(json.dumps(json_safe(out), allow_nan=False))
        return 0
    extra = [f"{int(out['persons'])} persons", "flip test" if out["flip_test"] else "no flip test"]
    if out["skipped"]:
        extra.append(f"{out['skipped']} unreadable images skipped")
    if out["dropped_summary"]:
        extra.append(f"left out: {out['dropped_summary']}")
    print(f"{out['model']} on {out['data']}/{args.split}, {out['boxes']} boxes ({', '.join(extra)})")
    print(format_table(list(STAT_NAMES), [[f"{100 * out[k]:.1f}" for k in STAT_NAMES]]))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """``tdaf predict`` with a pose model: the joints of each person, optionally drawn."""
    images = collect_images(args.images)
    device = resolve_device(args.device)
    loaded = load_model(args)
    if loaded.meta.get("keypoint_names") is None:
        raise ValueError(f"--checkpoint: {args.checkpoint} holds no keypoint names; is it a pose checkpoint?")
    boxes = read_box_file(args.person_boxes) if args.person_boxes else None
    outputs = Outputs(overwrite=args.overwrite)
    outputs.protect(images.files, "image")
    outputs.protect([args.checkpoint], "checkpoint")
    outputs.protect([args.person_boxes], "person boxes")
    targets: dict[str, Path] = {}
    if args.skeleton_out:  # every name checked before the first image
        outputs.claim_dir(args.skeleton_out, "--skeleton-out")
        for f, stem in zip(images.files, unique_stems(images.files)):
            targets[str(f)] = outputs.claim(Path(args.skeleton_out) / output_name(stem, "skeleton"), "--skeleton-out")
    results, skipped = predict_poses(loaded.model, loaded.meta, images, boxes, flip_test=not args.no_flip_test,
                                     device=device)
    drawn: list[str] = []
    with outputs:
        for r in results if args.skeleton_out else []:
            pic = pose_picture(r["file"], r["persons"], loaded.meta["skeleton"])
            drawn.append(str(outputs.save_image(pic, targets[r["file"]])))
    if args.json:
        print(json.dumps(json_safe({"checkpoint": str(args.checkpoint), "model": loaded.name,
                                    "keypoint_names": loaded.meta["keypoint_names"], "results": results,
                                    "skipped": skipped, "drawn": drawn, "ignored": images.ignored})))
        return 0
    names = loaded.meta["keypoint_names"]
    rows: list[list[Any]] = []
    for r in results:
        for i, p in enumerate(r["persons"]):
            best = max(range(len(names)), key=lambda j: p["keypoints"][j][2])
            seen = sum(k[2] > 0.2 for k in p["keypoints"])
            rows.append([Path(r["file"]).name, str(i), ", ".join(f"{v:.0f}" for v in p["box"]), f"{seen}/{len(names)}",
                         f"{names[best]} ({p['keypoints'][best][0]:.0f}, {p['keypoints'][best][1]:.0f})"])
    if rows:
        print(format_table(["file", "person", "box x, y, w, h", "joints > 0.2", "most confident"], rows))
    counts = [f"{len(results)} image(s)", f"{sum(len(r['persons']) for r in results)} person(s)"]
    if skipped:
        counts.append(f"{len(skipped)} undecodable skipped")
    if drawn:
        counts.append(f"skeletons in {args.skeleton_out}")
    print(f"{', '.join(counts)}; {loaded.describe()}")
    return 0
