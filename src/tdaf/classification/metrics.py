"""Top-1 / top-5 accuracy and loss, summed over batches and processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine.distributed import all_reduce_sum
from ..engine.task import Evaluator

__all__ = ["ClassificationEvaluator"]


class ClassificationEvaluator(Evaluator):
    """Sums ``[loss * n, top-1 hits, top-5 hits, n]`` over batches (and processes); top-5 is
    top-min(5, K) for K classes. ``probs=True``: outputs are probabilities (10-crop)."""

    def __init__(self, probs: bool = False) -> None:
        self.probs = probs
        self.sums = torch.zeros(4, dtype=torch.float64)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        output = outputs.float()
        k = min(5, output.shape[1])
        hit = output.topk(k, dim=1).indices.eq(targets[:, None])
        loss = F.nll_loss(output.clamp_min(1e-12).log(), targets, reduction="sum") if self.probs else \
            F.cross_entropy(output, targets, reduction="sum")
        n = torch.tensor(float(targets.numel()), device=output.device)
        stats = torch.stack([loss.detach(), hit[:, 0].sum().float(), hit.any(dim=1).sum().float(), n]).double()
        self.sums = self.sums.to(stats.device) + stats

    def gather(self) -> None:
        all_reduce_sum(self.sums)

    def compute(self) -> dict[str, float]:
        loss, top1, top5, n = (float(v) for v in self.sums.tolist())
        if n == 0:
            return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "images": 0}
        return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "images": int(n)}
