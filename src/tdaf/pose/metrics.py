"""COCO keypoint evaluation of a top-down model: heat-maps decoded to image coordinates,
SimpleBaseline's rescoring and OKS non-maximum suppression, then pycocotools' COCOeval
(``iouType="keypoints"``): AP, AP50, AP75, AP_M, AP_L and AR over OKS thresholds."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..engine.distributed import all_gather_objects
from ..engine.task import Evaluator
from ..io.optional import require
from .codec import affine_matrix, apply_affine, decode_heatmaps, invert_affine

__all__ = ["KeypointEvaluator", "oks_iou", "oks_nms", "heatmaps_to_keypoints", "coco_keypoint_stats",
           "heatmap_loss", "STAT_NAMES"]

STAT_NAMES = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR")


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """SimpleBaseline's ``JointsMSELoss`` with target weights: 0.5 x the mean squared error
    of the heat-maps, joints of weight 0 left out (their maps count as zero error)."""
    w = weights[:, :, None, None].to(pred.dtype)
    return 0.5 * torch.nn.functional.mse_loss(pred.float() * w, target.float() * w)


def heatmaps_to_keypoints(heatmaps: torch.Tensor, center: torch.Tensor, scale: torch.Tensor,
                          stride: float) -> tuple[np.ndarray, np.ndarray]:
    """Decoded joints in image pixels (B, J, 2) and their heat-map maxima (B, J): the crop
    coordinates taken back through the inverse of each person's crop."""
    coords, maxvals = decode_heatmaps(heatmaps, stride)
    h, w = heatmaps.shape[-2] * stride, heatmaps.shape[-1] * stride
    out = np.empty(coords.shape, dtype=np.float64)
    for i in range(coords.shape[0]):
        m = affine_matrix(center[i].cpu().numpy(), scale[i].cpu().numpy(), 0.0, (int(w), int(h)))
        out[i] = apply_affine(coords[i].cpu().double().numpy(), invert_affine(m))
    return out, maxvals.cpu().numpy()


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray, sigmas: np.ndarray,
            vis_thr: float | None = None) -> np.ndarray:
    """Object keypoint similarity of person ``g`` (J, 3) to each of ``d`` (N, J, 3) (the
    reference's ``oks_iou``; joints below ``vis_thr`` in either are left out)."""
    var = (sigmas * 2) ** 2
    e = ((d[..., 0] - g[:, 0]) ** 2 + (d[..., 1] - g[:, 1]) ** 2) / var / ((area_g + area_d[:, None]) / 2 + np.spacing(1)) / 2
    keep = np.ones_like(e, dtype=bool)
    if vis_thr is not None:
        keep = (g[:, 2] > vis_thr)[None, :] & (d[..., 2] > vis_thr)
    n = keep.sum(axis=1)
    return np.where(n > 0, (np.exp(-e) * keep).sum(axis=1) / np.maximum(n, 1), 0.0)


def oks_nms(people: Sequence[dict[str, Any]], thr: float, sigmas: np.ndarray, vis_thr: float | None = None) -> list[int]:
    """Indices of ``people`` (``keypoints`` (J, 3), ``score``, ``area``) kept by greedy OKS
    suppression at ``thr``, best score first."""
    if not people:
        return []
    kpts = np.stack([p["keypoints"] for p in people])
    scores = np.array([p["score"] for p in people])
    areas = np.array([p["area"] for p in people])
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        ovr = oks_iou(kpts[i], kpts[order[1:]], areas[i], areas[order[1:]], sigmas, vis_thr)
        order = order[1:][ovr <= thr]
    return keep


def coco_keypoint_stats(coco: Any, results: list[dict[str, Any]], img_ids: Sequence[int] | None = None,
                        sigmas: Sequence[float] | None = None) -> dict[str, float]:
    """AP, AP50, AP75, AP_M, AP_L, AR of keypoint ``results`` (COCO results format) against
    ``coco`` with pycocotools' COCOeval; all 0 when there is no result, NaN for a range
    without ground truth."""
    COCOeval = require("pycocotools.cocoeval", "coco", "COCO keypoint evaluation").COCOeval

    if not results:
        return {k: 0.0 for k in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, "keypoints")
        if img_ids is not None:
            ev.params.imgIds = sorted(set(int(i) for i in img_ids))
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval's -1 means "no ground truth in this range" (e.g. no large person): NaN, not a score
    return {k: float(ev.stats[i]) if ev.stats[i] >= 0 else float("nan") for i, k in enumerate(STAT_NAMES)}


class KeypointEvaluator(Evaluator):
    """Collects decoded persons over batches (``update(heatmaps, targets)``), gathers them
    from every process, then rescores (box score x the mean heat-map maximum of the joints
    above ``vis_thr``), applies OKS NMS at ``oks_thr`` per image when ``nms`` (detector
    boxes), and evaluates with COCOeval over ``img_ids``. Also reports ``loss``, the
    heat-map MSE of the evaluated maps."""

    def __init__(self, coco: Any, category_id: int, sigmas: Sequence[float], stride: float,
                 img_ids: Sequence[int] | None = None, nms: bool = False, vis_thr: float = 0.2,
                 oks_thr: float = 0.9) -> None:
        self.coco = coco
        self.category_id = category_id
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.stride = stride
        self.img_ids = None if img_ids is None else list(img_ids)
        self.nms = nms
        self.vis_thr = vis_thr
        self.oks_thr = oks_thr
        self.people: list[dict[str, Any]] = []
        self.loss_sum = 0.0
        self.count = 0

    def update(self, outputs: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        if "heatmaps" in targets:
            loss = heatmap_loss(outputs, targets["heatmaps"], targets["weights"])
            self.loss_sum += float(loss) * outputs.shape[0]
            self.count += outputs.shape[0]
        coords, maxvals = heatmaps_to_keypoints(outputs, targets["center"], targets["scale"], self.stride)
        scale = targets["scale"].cpu().numpy()
        for i in range(coords.shape[0]):
            self.people.append(dict(
                image_id=int(targets["image_id"][i]), box_score=float(targets["score"][i]),
                keypoints=np.concatenate([coords[i], maxvals[i][:, None]], axis=1),
                area=float(scale[i, 0] * scale[i, 1]),
            ))

    def gather(self) -> None:
        parts = all_gather_objects((self.people, self.loss_sum, self.count))
        self.people = [p for part in parts for p in part[0]]  # type: ignore[index]
        self.loss_sum = sum(part[1] for part in parts)  # type: ignore[index]
        self.count = sum(part[2] for part in parts)  # type: ignore[index]

    def results(self) -> list[dict[str, Any]]:
        """The persons in COCO's keypoint results format, rescored and (with ``nms``) suppressed."""
        by_image: dict[int, list[dict[str, Any]]] = {}
        for p in self.people:
            conf = p["keypoints"][:, 2]
            visible = conf[conf > self.vis_thr]
            score = p["box_score"] * (float(visible.mean()) if visible.size else 0.0)
            by_image.setdefault(p["image_id"], []).append(dict(p, score=score))
        out = []
        for img_id in sorted(by_image):
            people = by_image[img_id]
            keep = oks_nms(people, self.oks_thr, self.sigmas, self.vis_thr) if self.nms else range(len(people))
            for k in keep:
                p = people[k]
                out.append(dict(image_id=img_id, category_id=self.category_id,
                                keypoints=[float(v) for v in p["keypoints"].reshape(-1)], score=float(p["score"])))
        return out

    def compute(self) -> dict[str, float]:
        stats = coco_keypoint_stats(self.coco, self.results(), self.img_ids, self.sigmas)
        if self.count:
            stats["loss"] = self.loss_sum / self.count
        stats["persons"] = float(len(self.people))
        return stats
