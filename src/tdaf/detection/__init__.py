"""Object detection (paper §4.2, Tab. 4): FCOS with a plain or TDAF ResNet backbone on
COCO-format data, the bundled digit scenes, COCOeval, and prediction pictures.

Importing this package registers the ``detection`` task, its models
(``fcos_resnet50_fpn``, ``tdaf_fcos_resnet50_fpn``, ...) and its data sets
(``digit_scenes``, ``coco``).
"""

from .data import (
    RECIPES, CocoDetection, collate_detection, eval_transform, find_coco_split, train_transform, write_digit_scenes,
)
from .metrics import COCO_METRICS, CocoEvaluator, coco_eval, to_coco_detections
from .models import (
    TDAFFCOS, backbone_of, build_fcos, fcos_resnet18_fpn, fcos_resnet50_fpn, fcos_resnet101_fpn,
    tdaf_fcos_resnet18_fpn, tdaf_fcos_resnet50_fpn, tdaf_fcos_resnet101_fpn, torchvision_fcos_state_dict,
)
from .predict import draw_detections, predict
from .task import DetectionTask, model_kwargs, open_split

__all__ = [
    "DetectionTask", "CocoDetection", "predict", "draw_detections", "CocoEvaluator", "TDAFFCOS", "build_fcos", "backbone_of",
    "torchvision_fcos_state_dict", "write_digit_scenes", "coco_eval", "to_coco_detections", "collate_detection",
    "train_transform", "eval_transform", "find_coco_split", "open_split", "model_kwargs", "RECIPES", "COCO_METRICS",
    "fcos_resnet18_fpn", "tdaf_fcos_resnet18_fpn", "fcos_resnet50_fpn", "tdaf_fcos_resnet50_fpn",
    "fcos_resnet101_fpn", "tdaf_fcos_resnet101_fpn",
]
