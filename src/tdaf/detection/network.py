"""The tensor-in, tensors-out part of an FCOS detector (what ``tdaf export`` writes and
``tdaf profile`` counts), and the post-processing that turns its outputs into boxes.

torchvision's ``FCOS.forward`` takes a list of images and returns a list of dicts: it
resizes and normalises each image (``model.transform``), pads them into one batch, runs the
backbone + FPN + head, then decodes the head's outputs against the anchor grid, keeps the
top scores per level, applies NMS and maps the boxes back to the original image size.
:class:`FCOSNetwork` is the middle part, one normalised ``(B, 3, H, W)`` tensor in and the
head's three tensors out; :func:`decode_detections` is the rest, done with torchvision's
own methods of the same model, so ``decode_detections(model, network(preprocess(model.transform, image)[None]), ...)`` gives
what ``model(images)`` gives (tests/test_command_matrix.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["FCOSNetwork", "OUTPUT_NAMES", "preprocess", "decode_detections", "level_sizes"]

# The head's outputs, in FCOS's order: per anchor point, the class logits (K), the box
# regression (4: left, top, right, bottom distances, in units of the level's stride) and the
# centre-ness logit (1).
OUTPUT_NAMES = ("cls_logits", "bbox_regression", "bbox_ctrness")


class FCOSNetwork(nn.Module):
    """Backbone (plain or R2DNS) + FPN + FCOS head of ``model``: ``forward(x)`` with ``x`` a
    normalised ``(B, 3, H, W)`` batch returns ``(cls_logits (B, A, K), bbox_regression (B, A,
    4), bbox_ctrness (B, A, 1))``, A = the anchor points of the five levels P3-P7 in order.
    Shares the model's modules (no copy)."""

    output_names = OUTPUT_NAMES

    def __init__(self, model: FCOS) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = list(self.backbone(x).values())
        out = self.head(features)
        return out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]


def preprocess(transform: GeneralizedRCNNTransform, image: torch.Tensor) -> torch.Tensor:
    """One ``(3, h, w)`` image in [0, 1] as the detector sees it, without batch padding:
    resized (shorter side ``min_size``, longer side at most ``max_size``) and normalised
    by the detector's ``transform`` (``model.transform``). Returns ``(3, H, W)``."""
    was_training = transform.training
    transform.eval()  # evaluation resizes to the last min_size (training draws one)
    try:
        resized, _ = transform.resize(image, None)
        return transform.normalize(resized)
    finally:
        transform.train(was_training)


def level_sizes(hw: Sequence[int], strides: Sequence[int] = (8, 16, 32, 64, 128)) -> list[tuple[int, int]]:
    """The feature-map sizes of P3-P7 for an ``(H, W)`` input: every stride-2 layer of the
    ResNet + FPN (3x3 or 1x1 convolutions with padding, max pooling) rounds up, so level s
    is ``ceil(H / s) x ceil(W / s)``."""
    return [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in strides]


@torch.no_grad()
def decode_detections(model: FCOS, outputs: Sequence[torch.Tensor], input_hw: Sequence[int],
                      original_sizes: Sequence[Sequence[int]] | None = None) -> list[dict[str, torch.Tensor]]:
    """Boxes, scores and labels from :class:`FCOSNetwork` outputs (PyTorch tensors, or the
    arrays an ONNX / TorchScript export returns), as ``model(images)`` returns them.

    ``input_hw`` is the ``(H, W)`` of the network's input batch; ``original_sizes`` the
    ``(h, w)`` of each image before :func:`preprocess` (boxes are scaled back to it; default:
    ``input_hw``). The model's ``score_thresh``, ``topk_candidates``, ``nms_thresh`` and
    ``detections_per_img`` apply."""
    cls_logits, bbox_regression, bbox_ctrness = (torch.as_tensor(o) for o in outputs)
    b, a = cls_logits.shape[:2]
    h, w = int(input_hw[0]), int(input_hw[1])
    sizes = level_sizes((h, w))
    per_level = [lh * lw for lh, lw in sizes]
    if sum(per_level) != a:
        raise ValueError(f"outputs: {a} anchor points, but an input of {h}x{w} has {sum(per_level)} over the levels "
                         f"P3-P7 ({per_level}); give the (H, W) the network ran at")
    images = ImageList(torch.empty(b, 0, h, w, device=cls_logits.device), [(h, w)] * b)
    # The anchor generator reads only the features' shapes, dtype and device.
    features = [torch.empty(b, 0, lh, lw, dtype=cls_logits.dtype, device=cls_logits.device) for lh, lw in sizes]
    anchors = model.anchor_generator(images, features)
    head = {"cls_logits": cls_logits, "bbox_regression": bbox_regression, "bbox_ctrness": bbox_ctrness}
    split_head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
    split_anchors = [list(x.split(per_level)) for x in anchors]
    detections = model.postprocess_detections(split_head, split_anchors, images.image_sizes)
    original = [(int(s[0]), int(s[1])) for s in original_sizes] if original_sizes is not None else [(h, w)] * b
    return model.transform.postprocess(detections, images.image_sizes, original)
