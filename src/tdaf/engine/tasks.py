"""What the trainer needs from a task: a model, a loss and a metric.

The trainer (:mod:`tdaf.engine.trainer`) is shared by every task; a task object supplies
the model for its data, the training loss and the evaluation statistics. Image
classification (paper §4.1) is the task implemented here.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model

__all__ = ["Task", "ClassificationTask", "model_kwargs"]


def model_kwargs(cfg: Any, num_classes: int) -> dict[str, Any]:
    """Arguments of :func:`tdaf.create_model` that rebuild the trained model (no pretrained path:
    the checkpoint's weights replace it)."""
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    for key in ("flows", "anar", "eta", "downsample"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    return kwargs


class Task(Protocol):
    """The task interface of the trainer."""

    name: str
    main_metric: str  # larger is better; decides best.pt

    def build_model(self, cfg: Any, num_classes: int) -> tuple[nn.Module, dict[str, Any]]: ...

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def batch_stats(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def summarize(self, sums: torch.Tensor) -> dict[str, float]: ...


class ClassificationTask:
    """Image classification (paper §4.1): cross-entropy loss, top-1 and top-5 accuracy.

    ``batch_stats`` returns the summable vector ``[loss * n, top-1 hits, top-5 hits, n]``
    (top-5 is top-min(5, K) for K classes), which ``summarize`` turns into fractions.
    """

    name = "classification"
    main_metric = "top1"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def build_model(self, cfg: Any, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
        kwargs = model_kwargs(cfg, num_classes)
        return create_model(cfg.model, pretrained=cfg.pretrained, **kwargs), kwargs

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)

    def batch_stats(self, output: torch.Tensor, target: torch.Tensor, probs: bool = False) -> torch.Tensor:
        output = output.float()
        k = min(5, output.shape[1])
        top = output.topk(k, dim=1).indices
        hit = top.eq(target[:, None])
        loss = F.nll_loss(output.clamp_min(1e-12).log(), target, reduction="sum") if probs else \
            F.cross_entropy(output, target, reduction="sum")
        n = torch.tensor(float(target.numel()), device=output.device)
        return torch.stack([loss.detach(), hit[:, 0].sum().float(), hit.any(dim=1).sum().float(), n]).double()

    def summarize(self, sums: torch.Tensor) -> dict[str, float]:
        loss, top1, top5, n = (float(v) for v in sums.tolist())
        if n == 0:
            return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "images": 0}
        return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "images": int(n)}
