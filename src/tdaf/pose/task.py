"""Top-down pose estimation (paper §4.3) as a task of the shared trainer: SimpleBaseline's
heat-map regression (MSE with per-joint target weights), validated with the flip test and
COCO's keypoint AP."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import TransformedDataset, subset_indices
from ..data.registry import dataset_spec
from ..engine.options import CheckpointToEvaluate, EvalData, EvalOptions, PredictOptions
from ..engine.task import AttentionItem, BuiltModel, StepOutput, Task, TaskData, register_task
from ..io.images import ImageList, open_image, unique_stems
from ..io.outputs import Outputs, output_name
from ..io.table import counts_line, format_table
from ..models import create_model, is_model, model_cfg
from ..models._registry import list_models, unknown_model_error
from ..r2dns import R2DNS
from .codec import crop_to_image, flip_heatmaps
from .data import (
    PERSON_BOXES_LAYOUTS, TASK, Augment, CocoPersons, KeypointInfo, TopDownTransform, annotation_file, describe_drops,
    input_hw, pose_collate,
)
from .metrics import STAT_NAMES, KeypointEvaluator, heatmap_loss
from .models import HEATMAP_STRIDE
from .predict import boxes_of, pose_picture, predict_poses, read_box_file

__all__ = ["PoseTask", "pose_model_kwargs", "PoseData", "build_pose_data"]



def _add_person_args(group: argparse._ArgumentGroup, boxes: str, boxes_default: str, thr_default: str) -> None:
    """``--person-boxes`` (either layout), ``--person-score-thr`` and ``--no-flip-test``: the
    same flags, read the same way, in ``tdaf eval`` and ``tdaf predict``."""
    layouts = PERSON_BOXES_LAYOUTS.replace("%", "%%")  # argparse formats help with %
    group.add_argument("--person-boxes", metavar="JSON", default=None, help=f"{boxes}: {layouts}; {boxes_default}")
    group.add_argument("--person-score-thr", type=float, default=None,
                       help=f"with --person-boxes: keep boxes scoring above this (default {thr_default})")
    group.add_argument("--no-flip-test", action="store_true", default=None, help="no flip test (default: flip test on)")


def pose_model_kwargs(cfg: Any, num_joints: int) -> dict[str, Any]:
    """Arguments of :func:`tdaf.create_model` that rebuild the trained model."""
    kwargs: dict[str, Any] = {"num_joints": int(num_joints)}
    kwargs.update(cfg.tdaf_kwargs())
    return kwargs


def pose_meta(name: str, info: KeypointInfo, hw: tuple[int, int], mean: Any, std: Any) -> dict[str, Any]:
    return dict(data=name, input_size=[3, hw[0], hw[1]], mean=list(mean), std=list(std),
                heatmap_stride=HEATMAP_STRIDE, sigma=2.0, **info.meta())


PoseData = TaskData


def build_pose_data(raw_train: CocoPersons | None, raw_val: CocoPersons, hw: tuple[int, int], mean: Any, std: Any,
                    seed: int = 0, train_subset: int | None = None,
                    val_subset: int | None = None) -> tuple[TransformedDataset | None, TransformedDataset]:
    """The augmented training crops and the plain validation crops of two splits."""
    info = raw_val.info
    train = None
    if raw_train is not None:
        train = TransformedDataset(raw_train, TopDownTransform(hw, info, Augment(), mean, std), seed=seed,
                                   indices=subset_indices(len(raw_train), train_subset))
    val = TransformedDataset(raw_val, TopDownTransform(hw, info, None, mean, std),
                             indices=subset_indices(len(raw_val), val_subset), seeded=False)
    return train, val


@register_task
class PoseTask(Task):
    """SimpleBaseline's training (heat-map MSE) and COCO keypoint evaluation.

    ``flip_test`` averages the heat-maps of the crop and of its mirror image (the mirror's
    maps flipped back, left/right joints swapped, shifted one pixel); the evaluator needs
    the validation annotations, which :meth:`build_data` (or :meth:`set_eval_data`) sets."""

    name = TASK
    attention_person_boxes = True
    main_metric = "AP"
    log_metrics = ("loss", "AP", "AP50", "AP75", "AP_M", "AP_L", "AR")
    defaults = {"model": "simplebaseline_resnet50", "data": "coco", "input_size": 256}
    labels = {"AP": "AP", "AR": "AR"}

    def __init__(self, flip_test: bool = True, flip_shift: bool = True) -> None:
        self.flip_test = flip_test
        self.flip_shift = flip_shift
        self.info: KeypointInfo | None = None
        self.val: CocoPersons | None = None
        self.val_img_ids: list[int] | None = None
        self.nms = False

    @classmethod
    def from_config(cls, cfg: Any) -> PoseTask:
        return cls()

    def check_config(self, cfg: Any, source: str = "config") -> None:
        if not is_model(cfg.model):
            raise ValueError(f"{source}: {unknown_model_error(cfg.model)}")
        if model_cfg(cfg.model).get("task", "classification") != TASK:
            raise ValueError(f"{source}: model: {cfg.model!r} is not a pose model; allowed: "
                             f"{', '.join(list_models(task=TASK))}")
        dataset_spec(cfg.data, TASK, f"{source}: data")
        try:
            input_hw(cfg.input_size)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        if cfg.recipe is not None:
            raise ValueError(f"{source}: recipe: got {cfg.recipe!r}; the pose task has one augmentation "
                             f"(SimpleBaseline's), leave recipe unset")
        if cfg.label_smoothing:
            raise ValueError(f"{source}: label_smoothing: got {cfg.label_smoothing}; the pose task has no labels "
                             f"to smooth, leave it 0")

    def set_eval_data(self, val: CocoPersons, img_ids: list[int] | None = None, nms: bool = False) -> None:
        """The annotations the evaluator scores against, the images it covers (None: every
        image of the annotation file) and whether to apply OKS NMS (detector boxes)."""
        self.val, self.info, self.val_img_ids, self.nms = val, val.info, img_ids, nms

    def build_data(self, cfg: Any) -> TaskData:
        spec = dataset_spec(cfg.data, TASK)
        hw = input_hw(cfg.input_size)
        raw_train, raw_val = spec.open("train", cfg.data_dir), spec.open("val", cfg.data_dir)
        for raw in (raw_train, raw_val):  # an image whose size contradicts its entry: refused
            if hasattr(raw, "strict"):
                raw.strict = cfg.strict
        mean, std = model_cfg(cfg.model)["mean"], model_cfg(cfg.model)["std"]
        if raw_train.info.names != raw_val.info.names:
            raise ValueError(f"--data-dir: the train and val annotations name different keypoints "
                             f"({len(raw_train.info.names)} vs {len(raw_val.info.names)})")
        train, val = build_pose_data(raw_train, raw_val, hw, mean, std, cfg.seed, cfg.train_subset, cfg.val_subset)
        img_ids = None if cfg.val_subset is None else sorted({raw_val.instances[i]["image_id"] for i in val.indices})
        self.set_eval_data(raw_val, img_ids)
        drops = "; ".join(d for d in (describe_drops(raw_train), describe_drops(raw_val)) if d)
        return TaskData(train, val, pose_collate, pose_meta(cfg.data, raw_val.info, hw, mean, std),  # type: ignore[arg-type]
                        description=f"{len(raw_val.info.names)} joints, {hw[0]}x{hw[1]} crops"
                        + (f" (skipped: {drops})" if drops else ""), unit="persons")

    def build_model(self, cfg: Any, meta: dict[str, Any]) -> BuiltModel:
        kwargs = pose_model_kwargs(cfg, len(meta["keypoint_names"]))
        return BuiltModel(create_model(cfg.model, pretrained=cfg.pretrained, **kwargs), cfg.model, kwargs)

    def training_step(self, model: nn.Module, inputs: torch.Tensor, targets: dict[str, torch.Tensor]) -> StepOutput:
        out = model(inputs)
        loss = heatmap_loss(out, targets["heatmaps"], targets["weights"])
        return StepOutput(loss, inputs.shape[0])

    def predict(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        heatmaps = model(inputs).float()
        if not self.flip_test:
            return heatmaps
        if self.info is None:
            raise RuntimeError("flip test: the task knows no left/right joint pairs; call build_data or set_eval_data")
        flipped = flip_heatmaps(model(inputs.flip(-1)).float(), self.info.flip_pairs, self.flip_shift)
        return (heatmaps + flipped) * 0.5

    def evaluator(self) -> KeypointEvaluator:
        if self.val is None:
            raise RuntimeError("pose evaluation needs its annotations: call build_data or set_eval_data first")
        return KeypointEvaluator(self.val.coco, self.val.category_id, self.val.info.sigmas, HEATMAP_STRIDE,
                                 img_ids=self.val_img_ids, nms=self.nms)

    def attention_regions(self, model: nn.Module, dataset: Any, indices: Sequence[int], inputs: Any,
                          targets: Any) -> torch.Tensor | None:
        """The joints in the input crop: 1 where a joint with target weight > 0 has its target
        heat-map at least half its peak, 0 elsewhere. The codec's Gaussian of sigma heat-map
        pixels is centred on the heat-map pixel ``mu = int(joint / stride + 0.5)``, and heat-map
        coordinate ``u`` is crop pixel ``u * stride`` (:func:`tdaf.pose.codec.decode_heatmaps`),
        so the half-peak set is the disc of radius ``sigma * sqrt(2 ln 2) * stride`` crop
        pixels about ``mu * stride`` (9.4 pixels for sigma 2, stride 4), drawn at full resolution."""
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, Mapping) or \
                not {"keypoints", "weights", "heatmaps"} <= set(targets):
            return None
        h, w = inputs.shape[-2:]
        stride = w / targets["heatmaps"].shape[-1]
        sigma = float(getattr(getattr(dataset, "transform", None), "sigma", 2.0))
        radius2 = 2 * math.log(2) * sigma**2  # in heat-map pixels: exp(-d^2 / (2 sigma^2)) >= 1/2
        joints = targets["keypoints"][..., :2].detach().double().cpu()
        mu = torch.trunc(joints / stride + 0.5)  # the codec's int(): towards zero
        used = targets["weights"].detach().cpu().reshape(joints.shape[:2]) > 0
        rows = torch.arange(h, dtype=torch.float64)[:, None] / stride
        cols = torch.arange(w, dtype=torch.float64)[None, :] / stride
        out = torch.zeros(joints.shape[0], h, w, dtype=torch.int8)
        for b, j in used.nonzero().tolist():
            near = (cols - mu[b, j, 0]) ** 2 + (rows - mu[b, j, 1]) ** 2 <= radius2
            out[b][near] = 1
        return out

    # ---- tdaf eval and tdaf predict
    @classmethod
    def add_eval_args(cls, group: argparse._ArgumentGroup) -> None:
        _add_person_args(group, "a detector's person boxes (Faster-RCNN / YOLO; OKS NMS applies)",
                         "default: ground-truth boxes", "0.0, the reference's")

    def eval_data(self, checkpoint: CheckpointToEvaluate, options: EvalOptions) -> EvalData:
        """COCO keypoint AP, AP50, AP75, AP_M, AP_L, AR with ground-truth boxes, or a detector's
        (``person_boxes``: scoring above ``person_score_thr``, then OKS NMS), with the
        checkpoint's crop size and normalisation."""
        boxes, score_thr = options.option("person_boxes"), options.option("person_score_thr")
        if score_thr is not None and boxes is None:
            raise ValueError("--person-score-thr: only with --person-boxes (ground-truth boxes have no score)")
        score_thr = 0.0 if score_thr is None else score_thr
        if not 0.0 <= score_thr < 1.0:
            raise ValueError(f"--person-score-thr: got {score_thr}; allowed: a number in [0, 1)")
        data, meta, split = checkpoint.data, checkpoint.meta, options.split
        spec = dataset_spec(data, TASK)
        if spec.needs_dir:
            if checkpoint.data_dir is None:
                raise ValueError(f"--data-dir: evaluating on {data} needs its folder (the checkpoint records none)")
            ann, images = annotation_file(checkpoint.data_dir, split)
            raw = CocoPersons(ann, images, boxes="gt" if boxes is None else str(boxes), score_thr=score_thr,
                              strict=options.strict)
        else:  # a bundled set: where the run wrote it (its data_dir, else the default), written if missing
            raw = spec.open(split, checkpoint.data_dir)
            raw.strict = options.strict
            ann = raw.ann_file
            if boxes is not None:
                raw = CocoPersons(ann, raw.image_dir, boxes=str(boxes), score_thr=score_thr, strict=options.strict)
        trained = KeypointInfo.from_meta(meta)
        if raw.info.names != trained.names:
            raise ValueError(f"--data-dir: {ann} names {len(raw.info.names)} keypoints "
                             f"({', '.join(raw.info.names[:3])}, ...), the checkpoint was trained on "
                             f"{len(trained.names)} ({', '.join(trained.names[:3])}, ...)")
        hw = (int(meta["input_size"][1]), int(meta["input_size"][2]))
        _, dataset = build_pose_data(None, raw, hw, meta["mean"], meta["std"], val_subset=options.subset)
        img_ids = None if options.subset is None else sorted({raw.instances[i]["image_id"] for i in dataset.indices})
        self.flip_test = not options.option("no_flip_test", False)
        self.set_eval_data(raw, img_ids, nms=boxes is not None)
        return EvalData(dataset, pose_collate, {
            "boxes": "ground truth" if boxes is None else str(boxes), "flip_test": self.flip_test,
            "dropped": {k: len(v) for k, v in raw.dropped.items()}, "dropped_summary": describe_drops(raw)})

    def format_eval(self, result: dict[str, Any]) -> str:
        extra = [f"{int(result['persons'])} persons", "flip test" if result["flip_test"] else "no flip test"]
        if result["skipped"]:
            extra.append(f"{result['skipped']} unreadable images skipped")
        if result["dropped_summary"]:
            extra.append(f"left out: {result['dropped_summary']}")
        return "\n".join([
            f"{result['model']} on {result['data']}/{result['split']}, {result['boxes']} boxes ({', '.join(extra)})",
            format_table(list(STAT_NAMES), [[f"{100 * result[k]:.1f}" for k in STAT_NAMES]])])

    @classmethod
    def add_predict_args(cls, group: argparse._ArgumentGroup) -> None:
        _add_person_args(group, "person boxes", "a results list's image_id names the image whose file name is that "
                         "number (COCO's naming); default: the whole image is one person", "every box")
        group.add_argument("--skeleton-out", metavar="DIR", default=None,
                           help="write each image with its skeletons here, as <image>_skeleton.png (may be the image "
                                "folder: inputs are never written over, existing files only with --overwrite)")

    def run_predictions(self, model: nn.Module, meta: dict[str, Any], inputs: ImageList,
                        options: PredictOptions) -> dict[str, Any]:
        """The joints of each person (the whole image, or the given boxes), optionally drawn."""
        if meta.get("keypoint_names") is None:
            raise ValueError(f"--checkpoint: {options.checkpoint} holds no keypoint names; is it a pose checkpoint?")
        box_file, score_thr = options.option("person_boxes"), options.option("person_score_thr")
        if score_thr is not None and box_file is None:
            raise ValueError("--person-score-thr: only with --person-boxes (the whole image has no score)")
        boxes = read_box_file(box_file, score_thr) if box_file else None
        skeleton_out = options.option("skeleton_out")
        outputs = Outputs(overwrite=options.overwrite)
        outputs.protect(inputs.files, "image")
        outputs.protect([options.checkpoint], "checkpoint")
        outputs.protect([box_file], "person boxes")
        targets: dict[str, Path] = {}
        if skeleton_out:  # every name checked before the first image
            outputs.claim_dir(skeleton_out, "--skeleton-out")
            for f, stem in zip(inputs.files, unique_stems(inputs.files)):
                targets[str(f)] = outputs.claim(Path(skeleton_out) / output_name(stem, "skeleton"), "--skeleton-out")
        results, skipped = predict_poses(model, meta, inputs, boxes, flip_test=not options.option("no_flip_test", False),
                                         device=options.device)
        drawn: list[str] = []
        with outputs:
            for r in results if skeleton_out else []:
                picture = self.draw_prediction(open_image(r["file"]), r, meta)
                drawn.append(str(outputs.save_image(picture, targets[r["file"]])))
        return {"keypoint_names": meta["keypoint_names"], "results": results, "skipped": skipped, "drawn": drawn}

    def format_predictions(self, report: dict[str, Any], options: PredictOptions) -> str:
        names = report["keypoint_names"]
        rows: list[list[str]] = []
        for r in report["results"]:
            for i, p in enumerate(r["persons"]):
                best = max(range(len(names)), key=lambda j: p["keypoints"][j][2])
                seen = sum(k[2] > 0.2 for k in p["keypoints"])
                rows.append([Path(r["file"]).name, str(i), ", ".join(f"{v:.0f}" for v in p["box"]),
                             f"{seen}/{len(names)}",
                             f"{names[best]} ({p['keypoints'][best][0]:.0f}, {p['keypoints'][best][1]:.0f})"])
        lines = [format_table(["file", "person", "box x, y, w, h", "joints > 0.2", "most confident"], rows)] if rows else []
        items = [f"{len(report['results'])} image(s)", f"{sum(len(r['persons']) for r in report['results'])} person(s)"]
        counts = counts_line(items, len(report["skipped"]), report["ignored"])
        if report["drawn"]:
            counts += f", skeletons in {options.option('skeleton_out')}"
        return "\n".join(lines + [f"{counts}; {options.described}"])

    def draw_prediction(self, image: Image.Image, prediction: dict[str, Any],
                        meta: dict[str, Any]) -> Image.Image:
        return pose_picture(image, prediction["persons"], meta["skeleton"], names=meta.get("keypoint_names"))

    # --- attention / export / profile
    def attention_r2dns(self, model: nn.Module) -> R2DNS | None:
        """The R2DNS of the deconvolution head (TDAF SimpleBaseline, paper §4.3), else that
        of the backbone (``tdaf_backbone=True`` with a plain head)."""
        for part in (getattr(model, "head", None), getattr(model, "backbone", None)):
            if isinstance(part, R2DNS) and part.anar_name is not None:
                return part
        return super().attention_r2dns(model)

    def attention_items(self, paths: Sequence[str], meta: Mapping[str, Any],
                        person_boxes: str | None = None) -> list[AttentionItem]:
        """Images, one person crop each (the whole image); with ``person_boxes`` (a box file
        as ``tdaf eval`` and ``tdaf predict`` take it: a COCO results json or a mapping) one item per box, ``STEM_person{i}``,
        each box clipped to the image as evaluation does (a box wholly outside is left out,
        an image without boxes too, both said on stderr)."""
        items = super().attention_items(paths, meta)
        if person_boxes is None:
            return items
        boxes = read_box_file(person_boxes)
        out: list[AttentionItem] = []
        for item in items:
            path = item.paths[0]
            given = boxes_of(boxes, path)
            if not given:
                print(f"--person-boxes: no box for {path}; skipped", file=sys.stderr)
                continue
            try:
                with Image.open(path) as img:
                    width, height = img.size
            except OSError:  # unreadable: attention_input names it (skipped inside folders)
                width = height = None
            for i, b in enumerate(given):
                inside = crop_to_image(b[:4], width, height) if width is not None else list(b[:4])
                if inside is None:
                    print(f"--person-boxes: {path} box {i} lies outside the {width}x{height} image; left out",
                          file=sys.stderr)
                    continue
                out.append(AttentionItem(f"{item.stem}_person{i}", [path], item.from_folder, box=list(inside)))
        if not out:
            raise ValueError(f"--person-boxes: {person_boxes} has no box inside the images given")
        return out

    def attention_input(self, item: AttentionItem, meta: Mapping[str, Any],
                        size: Sequence[int] | None = None) -> torch.Tensor:
        """The person crop of ``item.box`` (default: the whole image, as ``tdaf predict``
        crops it without ``--person-boxes``): the box widened to the input's aspect ratio
        (x1.25), warped to ``input_size`` (or ``size``) and normalised."""
        img = open_image(item.paths[0])
        h, w = (int(s) for s in (size or meta["input_size"])[-2:])
        # No augmentation and no flip: the transform never reads the joint names.
        transform = TopDownTransform((h, w), None, None, meta["mean"], meta["std"])  # type: ignore[arg-type]
        box = item.box or [0.0, 0.0, float(img.width), float(img.height)]
        crop, _ = transform((img, dict(image_id=0, box=box, score=1.0, area=float(box[2] * box[3]),
                                       keypoints=np.zeros((1, 3)))))
        return crop[None]
