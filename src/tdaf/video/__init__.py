"""Action recognition (paper §4.4): 3D-ResNets with 3D TDAF on Kinetics-style video.

Importing this package registers the ``video`` task, the ``r3d_*`` / ``tdaf_r3d_*`` models
and the data sets ``kinetics`` (a folder in Kinetics layout), ``moving_digits`` and
``moving_digits_hard`` (built in).
"""

from .data import VideoClips, VideoFolder, build_datasets, open_split
from .digits import (
    moving_digits_hard_root, moving_digits_root, write_moving_digits, write_moving_digits_hard, write_video,
)
from .metrics import VideoEvaluator
from .models import (
    Hara3DResNet, VideoClassifier, VideoHead, inflate_state_dict, r3d_resnet10, r3d_resnet10_w16, r3d_resnet18,
    r3d_resnet34, r3d_resnet50, r3d_resnet101, tdaf_r3d_resnet10, tdaf_r3d_resnet10_w16, tdaf_r3d_resnet18,
    tdaf_r3d_resnet34, tdaf_r3d_resnet50, tdaf_r3d_resnet101,
)
from .task import VideoTask, clip_frames

__all__ = [
    "VideoTask", "VideoEvaluator", "VideoClassifier", "VideoHead", "Hara3DResNet", "inflate_state_dict",
    "VideoClips", "VideoFolder", "build_datasets", "open_split", "moving_digits_root", "write_moving_digits",
    "moving_digits_hard_root", "write_moving_digits_hard", "write_video", "clip_frames", "r3d_resnet10",
    "r3d_resnet10_w16", "r3d_resnet18", "r3d_resnet34", "r3d_resnet50", "r3d_resnet101", "tdaf_r3d_resnet10",
    "tdaf_r3d_resnet10_w16", "tdaf_r3d_resnet18", "tdaf_r3d_resnet34", "tdaf_r3d_resnet50", "tdaf_r3d_resnet101",
]
