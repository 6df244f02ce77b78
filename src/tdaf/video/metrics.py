"""Clip- and video-level top-1 / top-5 of an action classifier (paper §4.4, Tab. 6).

Clip accuracy counts each clip's own prediction; video accuracy averages the softmax
scores of all clips of a video first (Hara et al. 2018). Clips of one video may be spread
over processes, so the per-video sums are gathered as objects and merged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..engine.distributed import all_gather_objects, all_reduce_sum
from ..engine.task import Evaluator

__all__ = ["VideoEvaluator"]


class VideoEvaluator(Evaluator):
    """``update(logits (B, K), targets (B, 3) = [label, video, looped])``; ``compute()`` gives
    ``loss``, ``clip_top1``, ``clip_top5``, ``video_top1``, ``video_top5`` (top-min(5, K)),
    ``clips``, ``videos`` and ``looped_videos`` (videos shorter than a clip)."""

    def __init__(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)  # loss * n, clip top-1, clip top-5, n
        # video -> [summed probabilities, clips, label, looped]
        self.videos: dict[int, list[object]] = {}

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        logits = outputs.float()
        labels = targets[:, 0]
        k = min(5, logits.shape[1])
        hit = logits.topk(k, dim=1).indices.eq(labels[:, None])
        loss = F.cross_entropy(logits, labels, reduction="sum")
        stats = torch.stack([loss.detach(), hit[:, 0].sum().float(), hit.any(dim=1).sum().float(),
                             torch.tensor(float(len(labels)), device=logits.device)]).double().cpu()
        self.sums += stats
        probs = logits.softmax(dim=1).double().cpu()
        for p, (label, video, looped) in zip(probs, targets.cpu().tolist()):
            entry = self.videos.get(video)
            if entry is None:
                self.videos[video] = [p.clone(), 1, label, bool(looped)]
            else:
                entry[0] = entry[0] + p  # type: ignore[operator]
                entry[1] = int(entry[1]) + 1  # type: ignore[call-overload]
                entry[3] = bool(entry[3]) or bool(looped)

    def gather(self) -> None:
        all_reduce_sum(self.sums)
        merged: dict[int, list[object]] = {}
        for part in all_gather_objects(self.videos):
            for video, (p, n, label, looped) in part.items():  # type: ignore[attr-defined]
                if video in merged:
                    m = merged[video]
                    merged[video] = [m[0] + p, int(m[1]) + n, label, bool(m[3]) or looped]  # type: ignore[operator]
                else:
                    merged[video] = [p, n, label, looped]
        self.videos = merged

    def compute(self) -> dict[str, float]:
        loss, top1, top5, n = (float(v) for v in self.sums.tolist())
        if n == 0:
            nan = math.nan
            return {"loss": nan, "clip_top1": nan, "clip_top5": nan, "video_top1": nan, "video_top5": nan,
                    "clips": 0, "videos": 0, "looped_videos": 0}
        v1 = v5 = 0
        for p, _, label, _ in self.videos.values():
            k = min(5, len(p))  # type: ignore[arg-type]
            top = p.topk(k).indices.tolist()  # type: ignore[attr-defined]
            v1 += top[0] == label
            v5 += label in top
        videos = len(self.videos)
        return {"loss": loss / n, "clip_top1": top1 / n, "clip_top5": top5 / n, "video_top1": v1 / videos,
                "video_top5": v5 / videos, "clips": int(n), "videos": videos,
                "looped_videos": sum(bool(e[3]) for e in self.videos.values())}
