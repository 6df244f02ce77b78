"""Image classification (paper §4.1) as a task of the shared trainer.

Cross-entropy loss; top-1 / top-5 accuracy at evaluation, on 1 crop or the 10-crop test
of Tab. 3a (the softmax of the 10 crops averaged per image).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import TransformedDataset, collate_skip, subset_indices
from ..data.registry import dataset_spec
from ..engine.options import CheckpointToEvaluate, EvalData, EvalOptions, PredictOptions
from ..attention_stats import boxes_to_regions
from ..engine.task import AttentionItem, BuiltModel, StepOutput, Task, TaskData, register_task
from ..io.images import ImageList, open_image
from ..io.table import counts_line, topk_table
from ..models import create_model, is_model
from ..models._registry import unknown_model_error
from .data import RECIPES, TASK, build_datasets, eval_transform, open_split, ten_crop_transform
from .metrics import ClassificationEvaluator
from .predict import predict

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

    def attention_regions(self, model: nn.Module, dataset: Any, indices: Sequence[int], inputs: Any,
                          targets: Any) -> torch.Tensor | None:
        """The object's box where the raw data set gives one (``object_boxes``: the cluttered
        digits), scaled from its canvas to the input (the test transform resizes)."""
        raw = getattr(dataset, "raw", None)
        boxes_of = getattr(raw, "object_boxes", None)
        if boxes_of is None or self.ten_crop or not isinstance(inputs, torch.Tensor):
            return None
        h, w = inputs.shape[-2:]
        boxes = []
        for i in indices:
            (cw, ch), image_boxes = boxes_of(dataset.indices[i])
            sx, sy = w / cw, h / ch
            boxes.append([[x0 * sx, y0 * sy, x1 * sx, y1 * sy] for x0, y0, x1, y1 in image_boxes])
        return boxes_to_regions(boxes, (h, w))

    # ---- tdaf eval and tdaf predict
    eval_batch_size = 100

    @classmethod
    def add_eval_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--ten-crop", action="store_true", default=None,
                           help="10-crop test (corners + centre, and mirrors; paper Tab. 3a)")

    def eval_data(self, checkpoint: CheckpointToEvaluate, options: EvalOptions) -> EvalData:
        """Top-1 / top-5 on a split, preprocessed with the checkpoint's meta (input size,
        mean/std, resize); the 10-crop test with ``ten_crop``."""
        data, meta = checkpoint.data, checkpoint.meta
        spec = dataset_spec(data, TASK)
        if options.data_dir is not None and not spec.needs_dir:
            raise ValueError(f"--data-dir: {data} is built in and reads no folder; drop --data-dir")
        raw = open_split(data, options.split, checkpoint.data_dir if spec.needs_dir else None)
        outputs = getattr(checkpoint.model, "num_classes", None)
        classes = list(meta.get("class_names") or [])
        if isinstance(outputs, int) and outputs != len(raw.classes):
            raise ValueError(f"--data: {data} has {len(raw.classes)} classes, but the checkpoint's model has "
                             f"{outputs} outputs")
        if classes and classes != raw.classes:
            diff = next(i for i, (a, b) in enumerate(zip(classes, raw.classes)) if a != b)
            raise ValueError(f"--data: class {diff} is {raw.classes[diff]!r} here but {classes[diff]!r} in the "
                             f"checkpoint; the data's class folders must match the training data")
        self.ten_crop = bool(options.option("ten_crop", False))
        transform = ten_crop_transform(meta) if self.ten_crop else eval_transform(meta)
        dataset = TransformedDataset(raw, transform, indices=subset_indices(len(raw), options.subset), seeded=False)
        # held in memory: starting workers costs more than they save
        return EvalData(dataset, collate_skip, {"crops": 10 if self.ten_crop else 1}, in_memory=not spec.needs_dir)

    def format_eval(self, result: dict[str, Any]) -> str:
        skipped = f", {result['skipped']} unreadable skipped" if result["skipped"] else ""
        return (f"{result['model']} on {result['data']}/{result['split']} ({result['images']} images, "
                f"{result['crops']}-crop{skipped}): top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  "
                f"loss {result['loss']:.4f}")

    @classmethod
    def add_predict_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--topk", type=int, default=None,
                           help="labels per image (default 5; capped at the class count)")

    def run_predictions(self, model: nn.Module, meta: dict[str, Any], inputs: ImageList,
                        options: PredictOptions) -> dict[str, Any]:
        """The top-k labels of each image (softmax scores)."""
        topk = options.option("topk", 5)
        if topk < 1:
            raise ValueError(f"--topk: got {topk}; allowed: >= 1")
        if options.workers is not None and options.workers < 0:
            raise ValueError(f"--workers: got {options.workers}; allowed: >= 0")
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"--checkpoint: {options.checkpoint} holds {meta.get('model_name')}, which is not a "
                             f"classifier")
        names = meta.get("class_names")
        if names is None:
            log.warning("the checkpoint names no classes; labels are class indices")
            names = [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"--checkpoint: {options.checkpoint} names {len(names)} classes but its model has "
                             f"{num_classes} outputs")
        workers = options.workers if options.workers is not None else (2 if len(inputs) > 256 else 0)
        results, skipped = predict(model, inputs, eval_transform(meta), [str(n) for n in names], topk=topk,
                                   batch_size=options.batch_size, workers=workers, device=options.device,
                                   progress=options.progress)
        return {"topk": min(topk, num_classes), "results": results, "skipped": skipped}

    def format_predictions(self, report: dict[str, Any], options: PredictOptions) -> str:
        lines = [topk_table(report["results"], report["topk"])] if report["results"] else []
        counts = counts_line([f"{len(report['results'])} image(s)"], len(report["skipped"]), report["ignored"])
        return "\n".join(lines + [f"{counts}; {options.described}, scores are softmax probabilities"])

    # --- attention / export / profile
    def attention_input(self, item: AttentionItem, meta: Mapping[str, Any],
                        size: Sequence[int] | None = None) -> torch.Tensor:
        """The image preprocessed as ``tdaf eval`` does (resize + centre crop of the
        checkpoint's meta), or resized straight to ``size``."""
        meta = dict(meta, input_size=list(size), resize=None) if size else dict(meta)
        return eval_transform(meta)(open_image(item.paths[0]))[None]
