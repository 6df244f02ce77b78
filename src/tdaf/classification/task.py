"""Image classification (paper §4.1) as a task of the shared trainer.

Cross-entropy loss; top-1 / top-5 accuracy at evaluation, on 1 crop or the 10-crop test
of Tab. 3a (the softmax of the 10 crops averaged per image).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import collate_skip
from ..data.registry import dataset_spec
from ..engine.task import AttentionItem, BuiltModel, StepOutput, Task, TaskData, register_task
from ..models import create_model, is_model
from ..models._registry import unknown_model_error
from ..io.images import open_image
from .data import TASK, RECIPES, build_datasets, eval_transform
from .metrics import ClassificationEvaluator

__all__ = ["ClassificationTask", "model_kwargs"]

log = logging.getLogger("tdaf.train")


def model_kwargs(cfg: Any, num_classes: int) -> dict[str, Any]:
    """Arguments of :func:`tdaf.create_model` that rebuild the trained model (no pretrained path:
    the checkpoint's weights replace it)."""
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    kwargs.update(cfg.tdaf_kwargs())
    return kwargs


@register_task
class ClassificationTask(Task):
    """Cross-entropy training and top-1/top-5 evaluation of an image classifier.

    ``ten_crop=True`` evaluates batches of shape ``(B, 10, C, H, W)`` (the 10-crop test).
    """

    name = TASK
    main_metric = "top1"
    log_metrics = ("loss", "top1", "top5")
    train_metrics = ("top1",)
    defaults = {"model": "resnet18_cifar", "data": "digits"}
    labels = {"top1": "top-1", "top5": "top-5"}

    def __init__(self, label_smoothing: float = 0.0, ten_crop: bool = False) -> None:
        self.label_smoothing = label_smoothing
        self.ten_crop = ten_crop

    @classmethod
    def from_config(cls, cfg: Any) -> ClassificationTask:
        return cls(label_smoothing=cfg.label_smoothing)

    def check_config(self, cfg: Any, source: str = "config") -> None:
        if not is_model(cfg.model):
            raise ValueError(f"{source}: {unknown_model_error(cfg.model)}")
        dataset_spec(cfg.data, TASK, f"{source}: data")
        if cfg.recipe is not None and cfg.recipe not in RECIPES:
            raise ValueError(f"{source}: recipe: got {cfg.recipe!r}; allowed: {', '.join(RECIPES)}")

    def build_data(self, cfg: Any) -> TaskData:
        train, val, info = build_datasets(
            cfg.data, cfg.data_dir, input_size=cfg.input_size, recipe=cfg.recipe, seed=cfg.seed,
            train_subset=cfg.train_subset, val_subset=cfg.val_subset,
        )
        if len(info.class_names) < 2:
            log.warning("%s has %d class (%s): a classifier learns nothing from it; check the data folder",
                        cfg.data, len(info.class_names), ", ".join(info.class_names))
        size = info.input_size
        return TaskData(train, val, collate_skip, info.meta(), in_memory=not dataset_spec(cfg.data, TASK).needs_dir,
                        description=f"{len(info.class_names)} classes, {size[1]}x{size[2]}")

    def build_model(self, cfg: Any, meta: dict[str, Any]) -> BuiltModel:
        kwargs = model_kwargs(cfg, len(meta["class_names"]))
        return BuiltModel(create_model(cfg.model, pretrained=cfg.pretrained, **kwargs), cfg.model, kwargs)

    def training_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        out = model(inputs)
        loss = F.cross_entropy(out.float(), targets, label_smoothing=self.label_smoothing)
        hits = (out.detach().argmax(dim=1) == targets).sum()
        return StepOutput(loss, targets.numel(), {"top1": hits})

    def predict(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        if not self.ten_crop:
            return model(inputs)
        b, n = inputs.shape[:2]
        out = model(inputs.flatten(0, 1))
        return out.float().softmax(dim=1).view(b, n, -1).mean(dim=1)

    def move(self, inputs: Any, targets: Any, device: torch.device,
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[Any, Any]:
        if self.ten_crop:  # (B, 10, C, H, W): the crops are flattened into the batch by predict
            return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        return super().move(inputs, targets, device, memory_format)

    def evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator(probs=self.ten_crop)

    # --- attention / export / profile
    def attention_input(self, item: AttentionItem, meta: Mapping[str, Any],
                        size: Sequence[int] | None = None) -> torch.Tensor:
        """The image preprocessed as ``tdaf eval`` does (resize + centre crop of the
        checkpoint's meta), or resized straight to ``size``."""
        meta = dict(meta, input_size=list(size), resize=None) if size else dict(meta)
        return eval_transform(meta)(open_image(item.paths[0]))[None]
