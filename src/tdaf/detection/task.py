"""Object detection (paper §4.2) as a task of the shared trainer: FCOS's own losses in
training mode (torchvision's detector contract), COCOeval box AP at validation."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms.v2 import functional as TF

from ..attention_stats import boxes_to_regions
from ..data import TransformedDataset, subset_indices
from ..data.registry import dataset_spec
from ..engine.options import CheckpointToEvaluate, EvalData, EvalOptions, PredictOptions
from ..engine.task import AttentionItem, BuiltModel, StepOutput, Task, TaskData, register_task
from ..io.images import ImageList, open_image
from ..io.outputs import Outputs
from ..io.table import counts_line, format_table
from ..models import create_model, is_model, list_models, model_cfg
from ..models._registry import unknown_model_error
from .data import RECIPES, CocoDetection, apply_pair, collate_detection, eval_transform, train_transform
from .metrics import COCO_METRICS, CocoEvaluator
from .models import TASK
from .network import FCOSNetwork, preprocess
from .predict import draw_detections, predict

__all__ = ["DetectionTask", "open_split", "model_kwargs", "recipe_sizes"]

log = logging.getLogger("tdaf.train")

LOSSES = ("classification", "bbox_regression", "bbox_ctrness")  # torchvision FCOS's loss dict


def open_split(name: str, split: str, data_dir: str | None, out: str | None = None) -> CocoDetection:
    """The untransformed split of a registered detection data set; the bundled digit scenes
    are written under ``data_dir``, else under the run's ``out`` folder, on first use."""
    spec = dataset_spec(name, TASK)
    if data_dir is None and not spec.needs_dir and out is not None:
        data_dir = str(Path(out).expanduser() / "data" / name)
    return spec.open(split, data_dir)


def recipe_of(data: str, recipe: str | None) -> dict[str, Any]:
    """The training recipe ``recipe`` (default: the data set's), see :data:`RECIPES`."""
    name = recipe if recipe is not None else dataset_spec(data, TASK).defaults.get("recipe", "fcos_ms")
    if name not in RECIPES:
        raise ValueError(f"recipe: got {name!r}; allowed for detection: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_sizes(data: str, recipe: str | None, input_size: int | None) -> dict[str, Any]:
    """``min_size`` / ``max_size`` of the model's resizing: the recipe's (default: the data
    set's), or one fixed shorter side ``input_size`` (the longer side capped at 1333/800 of it)."""
    sizes = recipe_of(data, recipe)
    if input_size is not None:
        return dict(min_size=[int(input_size)], max_size=max(int(input_size), round(input_size * 1333 / 800)))
    return dict(min_size=list(sizes["min_size"]), max_size=int(sizes["max_size"]))


def model_kwargs(cfg: Any, num_classes: int) -> dict[str, Any]:
    """Arguments of :func:`tdaf.create_model` that rebuild the trained detector (the backbone
    weights file is not among them: the checkpoint's weights replace it, but whether they
    froze the BatchNorms is)."""
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    kwargs.update(cfg.tdaf_kwargs())
    kwargs.update(recipe_sizes(cfg.data, cfg.recipe, cfg.input_size))
    kwargs["frozen_bn"] = cfg.pretrained is not None
    return kwargs


@register_task
class DetectionTask(Task):
    """FCOS training (the loss dict of torchvision's ``FCOS``, summed) and COCO box AP."""

    name = TASK
    main_metric = "AP"
    log_metrics = COCO_METRICS
    train_metrics = LOSSES
    defaults = {"model": "fcos_resnet18_fpn", "data": "digit_scenes"}
    labels = {"bbox_regression": "box", "bbox_ctrness": "ctr", "classification": "cls"}

    def __init__(self) -> None:
        self.gt: dict[str, Any] | None = None

    def check_config(self, cfg: Any, source: str = "config") -> None:
        if not is_model(cfg.model):
            raise ValueError(f"{source}: {unknown_model_error(cfg.model)}")
        if model_cfg(cfg.model).get("task") != TASK:
            raise ValueError(f"{source}: model: {cfg.model!r} is not a detection model; allowed: "
                             f"{', '.join(list_models(task=TASK))}")
        dataset_spec(cfg.data, TASK, f"{source}: data")
        recipe_sizes(cfg.data, cfg.recipe, cfg.input_size)

    def build_data(self, cfg: Any) -> TaskData:
        train = open_split(cfg.data, "train", cfg.data_dir, cfg.out)
        val = open_split(cfg.data, "val", cfg.data_dir, cfg.out)
        train.strict = val.strict = cfg.strict  # an image whose size contradicts its entry: refused
        if train.num_classes != val.num_classes:
            raise ValueError(f"{cfg.data}: the train and val annotations list different categories "
                             f"({train.ann_file}, {val.ann_file})")
        self.gt = val.gt
        meta = dict(data=cfg.data, categories=train.categories, class_names=train.classes,
                    num_classes=train.num_classes, recipe=cfg.recipe, **recipe_sizes(cfg.data, cfg.recipe,
                                                                                    cfg.input_size))
        return TaskData(
            TransformedDataset(train, apply_pair(train_transform(recipe_of(cfg.data, cfg.recipe)["flip"])), cfg.seed,
                               subset_indices(len(train), cfg.train_subset)),
            TransformedDataset(val, apply_pair(eval_transform()), cfg.seed,
                               subset_indices(len(val), cfg.val_subset), seeded=False),
            collate_detection, meta, in_memory=False,
            description=f"{len(train.categories)} categories, shorter side {meta['min_size']}",
            data_dir=str(train.ann_file.parent.parent) if cfg.data_dir is None else None,
        )

    def build_model(self, cfg: Any, meta: dict[str, Any]) -> BuiltModel:
        kwargs = model_kwargs(cfg, meta["num_classes"])
        model = create_model(cfg.model, pretrained=cfg.pretrained, **kwargs)
        return BuiltModel(model, cfg.model, kwargs)

    def training_step(self, model: nn.Module, inputs: list[torch.Tensor], targets: list[dict[str, Any]]) -> StepOutput:
        losses = model(inputs, targets)
        loss = sum(losses.values())
        n = len(inputs)
        return StepOutput(loss, n, {k: losses[k].detach() * n for k in LOSSES})

    def predict(self, model: nn.Module, inputs: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return model(inputs)

    def evaluator(self) -> CocoEvaluator:
        if self.gt is None:
            raise RuntimeError("detection: the evaluator needs the validation ground truth; call build_data first "
                               "(or use tdaf.engine.evaluate.evaluate_checkpoint)")
        return CocoEvaluator(self.gt)

    def attention_regions(self, model: nn.Module, dataset: Any, indices: Sequence[int], inputs: Any,
                          targets: Any) -> torch.Tensor | None:
        """The ground-truth boxes in the frame the backbone's R2DNS sees: the batch as the
        detector's own ``model.transform`` resizes and pads it (in eval mode, its evaluation
        size, as the monitor runs the model), each image's padding ignored (-1)."""
        transform = getattr(model, "transform", None)
        if not isinstance(transform, GeneralizedRCNNTransform) or not isinstance(inputs, list) or not inputs:
            return None
        was_training = transform.training
        transform.eval()
        try:
            with torch.no_grad():  # the transform copies the dicts; its boxes are new tensors
                batch, moved = transform(list(inputs), [{"boxes": t["boxes"]} for t in targets])
        finally:
            transform.train(was_training)
        assert moved is not None
        return boxes_to_regions([t["boxes"].detach().cpu().tolist() for t in moved], batch.tensors.shape[-2:],
                                valid=batch.image_sizes)

    # ---- tdaf eval and tdaf predict
    eval_batch_size = 8

    @classmethod
    def add_eval_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--detections", metavar="JSON", default=None,
                           help="write the detections (COCO result json) here (default: beside the checkpoint, "
                                "detections_<data>_<split>.json); never over an input, an existing file only with "
                                "--overwrite")

    def eval_data(self, checkpoint: CheckpointToEvaluate, options: EvalOptions) -> EvalData:
        """COCOeval box AP on a split; the detections are written as COCO result json to
        ``detections`` (default: beside the checkpoint), never over an input of the run (the
        checkpoint, the annotations, the images) nor, without ``overwrite``, over an existing
        file: checked before the evaluation, written after it."""
        data, model = checkpoint.data, checkpoint.model
        dataset_spec(data, TASK, "--data")  # a clear error for a data set of another task
        raw = open_split(data, options.split, checkpoint.data_dir)
        raw.strict = options.strict
        classes = model.head.classification_head.num_classes
        if raw.num_classes > classes:
            raise ValueError(f"--data: {data} has category ids up to {raw.num_classes - 1}, but the checkpoint's "
                             f"model has {classes} classes")
        given = options.option("detections")
        out = Path(given) if given is not None else Path(checkpoint.path).parent / f"detections_{data}_{options.split}.json"
        outputs = Outputs(overwrite=options.overwrite)
        outputs.protect([checkpoint.path], "checkpoint")
        outputs.protect([raw.ann_file], "annotations")
        outputs.protect((raw.image_dir / im["file_name"] for im in raw.images.values()), "image")
        outputs.claim(out, "--detections")
        evaluator = CocoEvaluator(raw.gt)  # kept: its detections are written

        def finish(result: dict[str, Any]) -> None:
            with outputs:
                outputs.write_text(json.dumps(evaluator.detections), out)
            result.update(detections=str(out), detections_count=len(evaluator.detections))

        dataset = TransformedDataset(raw, apply_pair(eval_transform()),
                                     indices=subset_indices(len(raw), options.subset), seeded=False)
        return EvalData(dataset, collate_detection, evaluator=evaluator, finish=finish)

    def format_eval(self, result: dict[str, Any]) -> str:
        skipped = f", {result['skipped']} unreadable skipped" if result["skipped"] else ""
        return "\n".join([
            f"{result['model']} on {result['data']}/{result['split']} ({int(result['images'])} images{skipped}), "
            f"COCOeval bbox:",
            format_table(list(COCO_METRICS), [[f"{100 * result[k]:.1f}" for k in COCO_METRICS]]),
            f"{result['detections_count']} detections written to {result['detections']}"])

    @classmethod
    def add_predict_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--out-dir", metavar="DIR", default=None,
                           help="write <image>_pred.png with the boxes drawn and predictions.json here (default: "
                                "print only); may be the image folder: inputs are never written over, existing "
                                "files only with --overwrite")
        group.add_argument("--score-thresh", type=float, default=None, help="lowest score kept (default 0.3)")
        group.add_argument("--attention", action="store_true", default=None,
                           help="with --out-dir: also <image>_attention.png, the ANAR maps of every stage and flow (TDAF models)")

    def run_predictions(self, model: nn.Module, meta: dict[str, Any], inputs: ImageList,
                        options: PredictOptions) -> dict[str, Any]:
        """Boxes, labels and scores of each image; pictures and predictions.json with ``out_dir``."""
        thresh = options.option("score_thresh", 0.3)
        out_dir = options.option("out_dir")
        attention = bool(options.option("attention", False))
        if attention and not out_dir:
            raise ValueError("--attention: needs --out-dir (the maps are written as pictures)")
        names = [""] * int(meta.get("num_classes", 0))
        for c in meta.get("categories", []):
            if 0 <= c["id"] < len(names):
                names[c["id"]] = c["name"]
        results, skipped = predict(model, inputs, names, out_dir, score_thresh=thresh, attention=attention,
                                   device=options.device, progress=options.progress, overwrite=options.overwrite,
                                   inputs=[options.checkpoint],
                                   draw=lambda image, result: self.draw_prediction(image, result, meta))
        return {"score_thresh": thresh, "results": results, "skipped": skipped}

    def format_predictions(self, report: dict[str, Any], options: PredictOptions) -> str:
        rows = [[Path(r["file"]).name, str(len(r["detections"])),
                 ", ".join(f"{d['label']}:{d['score']:.2f}" for d in r["detections"][:6])
                 + (" ..." if len(r["detections"]) > 6 else "")] for r in report["results"]]
        lines = [format_table(["file", "boxes", "labels (score >= %.2f)" % report["score_thresh"]], rows)] if rows else []
        out_dir = options.option("out_dir")
        where = f"; pictures and predictions.json in {out_dir}" if out_dir else ""
        counts = counts_line([f"{len(report['results'])} image(s)"], len(report["skipped"]), report["ignored"])
        return "\n".join(lines + [f"{counts}; {options.described}{where}"])

    def draw_prediction(self, image: Image.Image, prediction: dict[str, Any],
                        meta: dict[str, Any]) -> Image.Image:
        return draw_detections(image, prediction)

    # --- attention / export / profile
    def inference_meta(self, meta: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
        """The detector's own resizing and normalisation (``model.transform``): inputs of
        ``[3, min_size, max_size]`` (a landscape image at its largest, 800x1333 for COCO)."""
        t = model.transform
        min_size, max_size = int(t.min_size[-1]), int(t.max_size)
        return dict(meta, input_size=[3, min_size, max_size], min_size=[min_size], max_size=max_size,
                    mean=[float(v) for v in t.image_mean], std=[float(v) for v in t.image_std])

    def network(self, model: nn.Module) -> nn.Module:
        """Backbone + FPN + head (:class:`tdaf.detection.network.FCOSNetwork`): resizing,
        box decoding and NMS are left out (:func:`tdaf.detection.network.decode_detections`)."""
        return FCOSNetwork(model)

    def attention_input(self, item: AttentionItem, meta: Mapping[str, Any],
                        size: Sequence[int] | None = None) -> torch.Tensor:
        """The whole image as the detector sees it: shorter side ``min_size`` (longer side at
        most ``max_size``) and normalised, without batch padding; or resized straight to ``size``."""
        img = TF.to_dtype(TF.pil_to_tensor(open_image(item.paths[0])), torch.float32, scale=True)
        if size:
            img = TF.resize(img, [int(s) for s in size[-2:]], antialias=True)
            return TF.normalize(img, list(meta["mean"]), list(meta["std"]))[None]
        transform = GeneralizedRCNNTransform(int(meta["min_size"][-1]), int(meta["max_size"]), list(meta["mean"]),
                                             list(meta["std"]))
        return preprocess(transform, img)[None]
