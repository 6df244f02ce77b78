"""Where the objects are, per task (``Task.attention_regions``): exact on known cases in the
frame each task's R2DNS sees, and the attention monitor's focus of one tiny run per task."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import tdaf
from tdaf.engine.monitor import checkpoint_attention_stats, monitor_batch
from tdaf.engine.options import EvalOptions
from tdaf.engine.trainer import train

SMALL_RUN = dict(epochs=1, workers=0, progress=False, tensorboard=False)


def _focus_columns(out: Path) -> dict[str, float]:
    with open(out / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    return {k: float(v) for k, v in row.items() if k.startswith("attn_") and k.endswith("_focus")}


def _checkpoint_stats_agree(result: dict, focus: dict[str, float]) -> None:
    """``tdaf attention --stats`` of the run's checkpoint: the focus training logged (same
    subset, same model) and an ablation of the task's own metric (its evaluator)."""
    stats = checkpoint_attention_stats(result["last"], EvalOptions(progress=False))
    assert stats["regions"]
    for key, value in focus.items():
        assert stats["gates"][key[5:-6]]["focus"] == pytest.approx(value, rel=1e-4), key
    ablation = stats["ablation"]
    assert all(math.isfinite(ablation[k]) for k in ("trained", "average_map", "constant")), ablation


# ---------------------------------------------------------------- detection
def test_detection_regions_are_the_boxes_in_the_resized_padded_batch() -> None:
    from tdaf.detection import DetectionTask

    model = tdaf.create_model("tdaf_fcos_resnet18_fpn", num_classes=3, flows=2, min_size=64, max_size=128)
    model.train()  # the regions take the evaluation resize whatever the mode, and leave the mode as it was
    inputs = [torch.rand(3, 32, 48), torch.rand(3, 40, 40)]  # x2 -> 64x96, x1.6 -> 64x64 (padded to 64x96)
    targets = [{"boxes": torch.tensor([[4.0, 8.0, 20.0, 16.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 25.0, 30.0], [30.0, 0.0, 40.0, 5.0]]), "labels": torch.tensor([1, 2])}]
    before = [t["boxes"].clone() for t in targets]
    regions = DetectionTask().attention_regions(model, None, [0, 1], inputs, targets)
    assert model.training and model.transform.training
    assert all(torch.equal(t["boxes"], b) for t, b in zip(targets, before))  # the targets are not touched
    assert regions is not None and regions.dtype == torch.int8 and regions.shape == (2, 64, 96)
    want = torch.zeros(2, 64, 96, dtype=torch.int8)
    want[0, 16:32, 8:40] = 1  # [4, 8, 20, 16] x 2
    want[1, :, 64:] = -1  # the second image covers 64x64 of the padded batch
    want[1, 8:48, 8:40] = 1  # [5, 5, 25, 30] x 1.6
    want[1, 0:8, 48:64] = 1  # [30, 0, 40, 5] x 1.6
    assert torch.equal(regions, want)
    # the frame is the one the backbone sees
    with torch.no_grad():
        batch, _ = model.eval().transform(inputs)
    assert tuple(batch.tensors.shape[-2:]) == (64, 96) and batch.image_sizes == [(64, 96), (64, 64)]


def test_detection_monitor_focus_on_a_tiny_run(tmp_path: Path) -> None:
    from tdaf.detection import write_digit_scenes

    scenes = write_digit_scenes(tmp_path / "scenes", train_images=4, val_images=3, size=64, digits=(1, 3),
                                scale=(16, 28))
    result = train({**SMALL_RUN, "task": "detection", "model": "tdaf_fcos_resnet18_fpn", "flows": 2,
                    "data": "digit_scenes", "data_dir": str(scenes), "input_size": 64, "batch_size": 2, "lr": 0.01,
                    "lr_batch": 16, "out": str(tmp_path / "run")})
    focus = _focus_columns(result["out"])
    assert focus and all(math.isfinite(v) and v > 0 for v in focus.values()), focus
    _checkpoint_stats_agree(result, focus)


# ---------------------------------------------------------------- pose
def _disc(h: int, w: int, cx: float, cy: float, r2: float) -> torch.Tensor:
    rows, cols = torch.arange(h, dtype=torch.float64)[:, None], torch.arange(w, dtype=torch.float64)[None, :]
    return (cols - cx) ** 2 + (rows - cy) ** 2 <= r2


def test_pose_regions_are_the_half_peak_of_the_visible_joints_target_heatmaps() -> None:
    from tdaf.pose import PoseTask
    from tdaf.pose.codec import encode_heatmaps

    joints = np.array([[21.0, 13.0], [5.0, 5.0], [40.0, 50.0]])
    heatmaps, weights = encode_heatmaps(joints, np.array([2, 0, 1]), (12, 16), 4)  # a 64x48 crop, stride 4
    targets = {"heatmaps": torch.from_numpy(heatmaps)[None], "weights": torch.from_numpy(weights)[None],
               "keypoints": torch.from_numpy(np.concatenate([joints, [[2], [0], [1]]], 1)).float()[None]}
    regions = PoseTask().attention_regions(None, None, [0], torch.zeros(1, 3, 64, 48), targets)
    assert regions is not None and regions.dtype == torch.int8 and regions.shape == (1, 64, 48)
    # the codec centres joint 0 on heat-map pixel (5, 3), crop pixel (20, 12); sigma 2 heat-map
    # pixels: half the peak within 2 sqrt(2 ln 2) heat-map pixels, 9.42 crop pixels
    r2 = 16 * 8 * math.log(2)
    want = _disc(64, 48, 20, 12, r2) | _disc(64, 48, 40, 52, r2)  # joint 2: int(12.5 + 0.5), heat-map pixel (10, 13)
    assert torch.equal(regions[0] == 1, want) and regions.min() == 0  # joint 1 is not visible: nothing
    assert regions[0, 12, 29] == 1 and regions[0, 12, 30] == 0 and regions[0, 21, 20] == 1 and regions[0, 22, 20] == 0
    # on the heat-map grid (crop pixel = 4 x heat-map pixel) it is the target heat-map >= half its peak
    assert torch.equal(regions[0, ::4, ::4] == 1, torch.from_numpy(heatmaps.max(0) >= 0.5))


def test_pose_regions_from_the_data_pipeline_and_the_monitor_focus(tmp_path: Path) -> None:
    from test_pose import GRID, write_coco

    from tdaf.engine.config import TrainConfig
    from tdaf.engine.task import get_task

    coco = write_coco(tmp_path / "coco")
    cfg = TrainConfig(task="pose", model="tdaf_simplebaseline_resnet18", data="coco", data_dir=str(coco),
                      input_size=128, batch_size=2, optimizer="adam", lr=1e-3, lr_batch=2, weight_decay=0.0,
                      out=str(tmp_path / "run"), **SMALL_RUN)
    task = get_task("pose").from_config(cfg)
    data = task.build_data(cfg)
    inputs, targets, indices = monitor_batch(task, data.val, data.collate)
    regions = task.attention_regions(None, data.val, indices, inputs, targets)
    assert regions is not None and regions.shape == (2, 128, 96)
    want = torch.zeros(128, 96, dtype=torch.bool)  # every joint on crop pixel 4 x its grid place
    for i, j in GRID:
        want |= _disc(128, 96, 4 * i, 4 * j, 16 * 8 * math.log(2))
    assert torch.equal(regions[0] == 1, want)
    # At the default 256x192 crop every gate of the head's R2DNS covers the crop exactly (the
    # 4:3 grid at strides 32, 16 and 8), so the crop frame is theirs up to gate_statistics'
    # resize. (At 128x96 the second flow starts from C5 4x3 down-sampled to 2x2, and its gate
    # is 4x4: that one is stretched onto the crop.)
    model = task.build_model(cfg, data.meta).model.eval()
    with task.attention_r2dns(model).record_attention() as maps, torch.no_grad():
        model(torch.zeros(1, 3, 256, 192))
    assert {k: tuple(m.shape[-2:]) for k, m in maps.items()} == {(1, 2): (8, 6), (1, 3): (16, 12), (2, 3): (32, 24)}

    result = train(cfg)
    focus = _focus_columns(result["out"])
    assert focus and all(math.isfinite(v) and v > 0 for v in focus.values()), focus
    _checkpoint_stats_agree(result, focus)


# ---------------------------------------------------------------- video
def _square_video(root: Path, split: str, name: str, frames: int = 10, size: int = 32) -> list[list[float]]:
    """A white 6x6 square moving right 2 pixels a frame (from x 2, y 10) as ``split/a/name.mp4``;
    its boxes."""
    from tdaf.video.digits import write_video

    (root / split / "a").mkdir(parents=True, exist_ok=True)
    video = np.zeros((frames, size, size), np.uint8)
    boxes = []
    for t in range(frames):
        video[t, 10:16, 2 + 2 * t:8 + 2 * t] = 255
        boxes.append([2.0 + 2 * t, 10.0, 8.0 + 2 * t, 16.0])
    write_video(root / split / "a" / f"{name}.mp4", video)
    return boxes


def test_video_regions_follow_the_box_through_the_clip_sampling_and_resize(tmp_path: Path) -> None:
    from tdaf.data import collate_skip
    from tdaf.video.data import VideoClips, VideoFolder
    from tdaf.video.digits import write_object_boxes
    from tdaf.video.task import VideoTask
    from tdaf.video.transforms import clip_transform

    root = tmp_path / "k"
    for split in ("train", "val"):
        boxes = {"a/v0.mp4": _square_video(root, split, "v0")}
        write_object_boxes(root / split, (32, 32), boxes)
    folder = VideoFolder(root, "val")
    assert folder.object_boxes(0) == ((32, 32), boxes["a/v0.mp4"])
    # clips of 4 frames, 2 per video (frames 0-3 and 6-9), resized to 16x16
    clips = VideoClips(folder, clip_transform("none", 16, (0.5,) * 3, (0.5,) * 3), frames=4, clips=2)
    batch = collate_skip([clips[0], clips[1]])
    regions = VideoTask().attention_regions(None, clips, [0, 1], batch.inputs, batch.targets)
    assert regions is not None and regions.dtype == torch.int8 and regions.shape == (2, 4, 16, 16)
    for row, first in ((0, 0), (1, 6)):
        for t in range(4):
            x0 = (2 + 2 * (first + t)) // 2  # half size: x 1 + frame, 3 wide; y 5..7
            want = torch.zeros(16, 16, dtype=torch.int8)
            want[5:8, x0:x0 + 3] = 1
            assert torch.equal(regions[row, t], want), (row, t)
    # the square is where the regions say, in the decoded, resized clip
    pixels = batch.inputs.mean(1)
    assert pixels[regions == 1].mean() > 0.5 and pixels[regions == 0].mean() < -0.9  # in [-1, 1]; blurred edges

    # a random crop: the mapping is not known; Kinetics: no boxes
    random_crop = VideoClips(folder, clip_transform("motion", 16, (0.5,) * 3, (0.5,) * 3), frames=4, clips=2)
    assert VideoTask().attention_regions(None, random_crop, [0, 1], batch.inputs, batch.targets) is None
    (root / "val" / "object_boxes.json").unlink()
    plain = VideoClips(VideoFolder(root, "val"), clip_transform("none", 16, (0.5,) * 3, (0.5,) * 3), frames=4, clips=2)
    assert VideoTask().attention_regions(None, plain, [0, 1], batch.inputs, batch.targets) is None
    (root / "val" / "object_boxes.json").write_text('{"boxes": 3}')
    with pytest.raises(ValueError, match=r"object_boxes.json: got .*expected .*frame_size"):
        VideoFolder(root, "val").object_boxes(0)


def test_video_regions_of_a_short_looped_video_repeat_its_boxes(tmp_path: Path) -> None:
    from tdaf.data import collate_skip
    from tdaf.video.data import VideoClips, VideoFolder
    from tdaf.video.digits import write_object_boxes
    from tdaf.video.task import VideoTask
    from tdaf.video.transforms import clip_transform

    root = tmp_path / "k"
    _square_video(root, "train", "v0", frames=3)
    boxes = _square_video(root, "val", "v0", frames=3)
    write_object_boxes(root / "val", (32, 32), {"a/v0.mp4": boxes})
    clips = VideoClips(VideoFolder(root, "val"), clip_transform("none", 32, (0.5,) * 3, (0.5,) * 3), frames=5, clips=1)
    batch = collate_skip([clips[0]])
    assert batch.targets[0, 2] == 1  # looped
    regions = VideoTask().attention_regions(None, clips, [0], batch.inputs, batch.targets)
    for t, frame in enumerate([0, 1, 2, 0, 1]):
        x0, y0, x1, y1 = (int(v) for v in boxes[frame])
        assert regions[0, t, y0:y1, x0:x1].eq(1).all() and regions[0, t].eq(1).sum() == 36


def test_moving_digits_write_the_moving_digits_box_per_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tdaf.video import digits as video_digits
    from tdaf.video.data import VideoFolder

    rng = np.random.default_rng(4)
    digit = (rng.random((16, 16)) * 255).astype(np.uint8)
    for motion, frames, boxes in video_digits.hard_clips("val", 10):
        assert len(boxes) == 16 and frames.shape == (16, 32, 32)
        for f, (x0, y0, x1, y1) in zip(frames, boxes):
            assert f[int(y0):int(y1), int(x0):int(x1)].max() > 0
    # the target drawn alone has exactly these boxes (the others are pasted by maximum)
    target = video_digits.render_hard(digit, "right", [], np.random.default_rng(1))
    again = video_digits._render_hard(digit, "right", [digit, digit], np.random.default_rng(1), 16, 32, 12)[1]
    assert again == video_digits.ink_boxes(target)
    assert again[-1][0] > again[0][0] and again[-1][1] == again[0][1]  # moving right
    # the built-in set writes them beside its videos (a new version: older folders are rewritten)
    monkeypatch.setenv("TDAF_DATA", str(tmp_path / "home"))
    monkeypatch.setattr(video_digits, "HARD_SIZES", {"train": 2, "val": 3})
    root = video_digits.moving_digits_hard_root()
    assert root.name == "moving_digits_hard-v2"
    folder = VideoFolder(root, "val")
    size, boxes = folder.object_boxes(2)
    assert size == (32, 32) and boxes == list(video_digits.hard_clips("val", 3))[2][2]


def test_video_monitor_focus_on_a_tiny_moving_digits_run(tmp_path: Path) -> None:
    from tdaf.video.digits import write_moving_digits_hard

    root = write_moving_digits_hard(tmp_path / "mdh", {"train": 4, "val": 2})
    result = train({**SMALL_RUN, "task": "video", "model": "tdaf_r3d_resnet10_w16", "data": "kinetics",
                    "data_dir": str(root), "input_size": 32, "batch_size": 4, "lr": 0.01, "lr_batch": 4,
                    "out": str(tmp_path / "run")})
    focus = _focus_columns(result["out"])
    assert focus and all(math.isfinite(v) and v > 0 for v in focus.values()), focus
    _checkpoint_stats_agree(result, focus)
