"""COCO box AP with pycocotools' ``COCOeval`` (paper Tab. 4: AP, AP50, AP75, AP_S, AP_M, AP_L)."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any

import torch

from ..engine.distributed import all_gather_objects
from ..engine.task import Evaluator
from ..io.optional import require

__all__ = ["CocoEvaluator", "to_coco_detections", "coco_eval", "COCO_METRICS"]

# The first six of COCOeval.stats, in its order.
COCO_METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


def to_coco_detections(output: dict[str, torch.Tensor], image_id: int) -> list[dict[str, Any]]:
    """A detector's ``{boxes (XYXY), scores, labels}`` for one image as COCO result entries
    (``bbox`` as ``[x, y, width, height]``, ``category_id`` = label)."""
    boxes = output["boxes"].detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [{"image_id": int(image_id), "category_id": int(label), "bbox": [round(v, 3) for v in box],
             "score": round(float(score), 5)}
            for box, score, label in zip(xywh, output["scores"].tolist(), output["labels"].tolist())]


def coco_eval(gt: dict[str, Any], detections: list[dict[str, Any]], image_ids: list[int] | None = None) -> dict[str, float]:
    """COCOeval (bbox) of ``detections`` against the ground truth ``gt`` (a COCO json dict),
    over ``image_ids`` (default: every image of ``gt``). Metrics are fractions in [0, 1];
    NaN where the ground truth has no box of that size (COCOeval's -1)."""
    COCO = require("pycocotools.coco", "coco", "COCO evaluation").COCO
    COCOeval = require("pycocotools.cocoeval", "coco", "COCO evaluation").COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(set(image_ids))
        if not detections or not coco_gt.getAnnIds(imgIds=ids):
            return {k: (0.0 if coco_gt.getAnnIds(imgIds=ids) else math.nan) for k in COCO_METRICS}
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v >= 0 else math.nan) for k, v in zip(COCO_METRICS, ev.stats[:6])}


class CocoEvaluator(Evaluator):
    """Collects detections per batch (``targets[i]["image_id"]`` names the image), gathers
    them from every process, and scores them with COCOeval on every process alike."""

    def __init__(self, gt: dict[str, Any]) -> None:
        self.gt = gt
        self.detections: list[dict[str, Any]] = []
        self.image_ids: list[int] = []

    def update(self, outputs: list[dict[str, torch.Tensor]], targets: list[dict[str, Any]]) -> None:
        for out, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            self.image_ids.append(image_id)
            self.detections.extend(to_coco_detections(out, image_id))

    def gather(self) -> None:
        parts = all_gather_objects((self.detections, self.image_ids))
        self.detections = [d for dets, _ in parts for d in dets]  # type: ignore[misc]
        self.image_ids = [i for _, ids in parts for i in ids]  # type: ignore[misc]

    def compute(self) -> dict[str, float]:
        result = coco_eval(self.gt, self.detections, self.image_ids)
        result["images"] = float(len(set(self.image_ids)))
        return result
