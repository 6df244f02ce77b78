"""Top-down human pose estimation (paper §4.3): SimpleBaseline and its TDAF head on COCO
keypoints. Importing this package registers the ``pose`` task, its models
(``simplebaseline_resnet50``, ``tdaf_simplebaseline_resnet50``, ...) and its data sets
(``coco``, the bundled ``stick_figures``)."""

from .codec import decode_heatmaps, encode_heatmaps, flip_heatmaps
from .figures import open_stick_figures, write_stick_figures
from .data import CocoPersons, KeypointInfo, TopDownTransform, open_coco, pose_collate
from .metrics import KeypointEvaluator, coco_keypoint_stats, oks_nms
from .models import (
    SimpleBaselinePose, simplebaseline_resnet18, simplebaseline_resnet50, simplebaseline_resnet101,
    tdaf_simplebaseline_resnet18, tdaf_simplebaseline_resnet50, tdaf_simplebaseline_resnet101,
)
from .task import PoseTask

__all__ = [
    "SimpleBaselinePose", "PoseTask", "KeypointEvaluator", "CocoPersons", "KeypointInfo", "TopDownTransform",
    "open_coco", "pose_collate", "encode_heatmaps", "decode_heatmaps", "flip_heatmaps", "coco_keypoint_stats",
    "oks_nms", "write_stick_figures", "open_stick_figures", "simplebaseline_resnet18", "simplebaseline_resnet50",
    "simplebaseline_resnet101", "tdaf_simplebaseline_resnet18", "tdaf_simplebaseline_resnet50",
    "tdaf_simplebaseline_resnet101",
]
