"""The detection parts of ``tdaf eval`` and ``tdaf predict`` (an FCOS checkpoint)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..cli._common import resolve_device
from ..cli._table import format_table
from ..engine.checkpoint import model_from_checkpoint
from ..io.files import json_safe
from ..io.images import collect_images
from .evaluate import evaluate_checkpoint
from .metrics import COCO_METRICS
from .predict import predict

__all__ = ["EVAL_OPTIONS", "PREDICT_OPTIONS", "add_eval_args", "add_predict_args", "run_eval", "run_predict"]

log = logging.getLogger("tdaf.predict")

# The flags below (by argparse dest), refused for checkpoints of other tasks.
EVAL_OPTIONS = ("detections",)
PREDICT_OPTIONS = ("out_dir", "score_thresh", "attention")


def add_eval_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--detections", metavar="JSON", default=None,
                   help="write the detections (COCO result json) here (default: beside the checkpoint, "
                        "detections_<data>_<split>.json); never over an input, an existing file only with --overwrite")


def add_predict_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--out-dir", metavar="DIR", default=None,
                   help="write <image>_pred.png with the boxes drawn and predictions.json here (default: print only); "
                        "may be the image folder: inputs are never written over, existing files only with --overwrite")
    g.add_argument("--score-thresh", type=float, default=None, help="lowest score kept (default 0.3)")
    g.add_argument("--attention", action="store_true", default=None,
                   help="with --out-dir: also <image>_attention.png, the last flow's ANAR maps (TDAF models)")


def run_eval(args: argparse.Namespace) -> int:
    """``tdaf eval`` of a detector: COCOeval AP, AP50, AP75, AP_S, AP_M, AP_L."""
    out = evaluate_checkpoint(
        args.checkpoint, args.data, args.data_dir, split=args.split, subset=args.subset,
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp, strict=args.strict,
        progress=args.progress and not args.json, detections=args.detections, overwrite=args.overwrite,
    )
    if out is None:
        return 0
    if args.json:
        print(json.dumps(json_safe(out), allow_nan=False))
        return 0
    skipped = f", {out['skipped']} unreadable skipped" if out["skipped"] else ""
    print(f"{out['model']} on {out['data']}/{out['split']} ({int(out['images'])} images{skipped}), COCOeval bbox:")
    print(format_table(list(COCO_METRICS), [[f"{100 * out[k]:.1f}" for k in COCO_METRICS]]))
    print(f"{out['detections_count']} detections written to {out['detections']}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """``tdaf predict`` with a detector: boxes, labels and scores of each image."""
    thresh = 0.3 if args.score_thresh is None else args.score_thresh
    if args.attention and not args.out_dir:
        raise ValueError("--attention: needs --out-dir (the maps are written as pictures)")
    device = resolve_device(args.device)
    images = collect_images(args.images)
    model, meta = model_from_checkpoint(args.checkpoint, "--checkpoint")
    names = [""] * int(meta.get("num_classes", 0))
    for c in meta.get("categories", []):
        if 0 <= c["id"] < len(names):
            names[c["id"]] = c["name"]
    results, skipped = predict(model, images, names, args.out_dir, score_thresh=thresh,
                               attention=bool(args.attention), device=device, progress=args.progress,
                               overwrite=args.overwrite, inputs=[args.checkpoint])
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "model": meta.get("model_name"),
                          "score_thresh": thresh, "results": results, "skipped": skipped, "ignored": images.ignored}))
        return 0
    rows = [[Path(r["file"]).name, str(len(r["detections"])),
             ", ".join(f"{d['label']}:{d['score']:.2f}" for d in r["detections"][:6])
             + (" ..." if len(r["detections"]) > 6 else "")] for r in results]
    if rows:
        print(format_table(["file", "boxes", "labels (score >= %.2f)" % thresh], rows))
    counts = [f"{len(results)} image(s)"]
    if skipped:
        counts.append(f"{len(skipped)} undecodable skipped")
    if images.ignored:
        counts.append(f"{images.ignored} non-image file(s) ignored")
    where = f"; pictures and predictions.json in {args.out_dir}" if args.out_dir else ""
    print(f"{', '.join(counts)}; {meta.get('model_name')}{where}")
    return 0
