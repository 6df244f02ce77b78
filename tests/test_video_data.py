"""Video data in Kinetics layouts, written by the test with PyAV: decoding, clips, bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tdaf.video.data import VideoClips, VideoFolder
from tdaf.video import digits as video_digits
from tdaf.video.digits import (
    HARD_MOTIONS, MOTIONS, hard_videos, render_hard, render_motion, write_moving_digits, write_moving_digits_hard,
    write_video,
)
from tdaf.video.io import count_frames, eval_clip_indices, read_frames, train_clip_indices
from tdaf.video.transforms import MultiScaleCornerCrop, clip_transform

SIZE = 32


def ramp_frames(n: int, base: int = 0, size: int = SIZE) -> np.ndarray:
    """Frame t is a flat grey of 20 + 8 t (+ base): decoded order is checkable."""
    values = np.clip(20 + 8 * np.arange(n) + base, 0, 255).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).copy()


def write_frame_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for t, f in enumerate(frames, start=1):
        Image.fromarray(f).save(folder / f"image_{t:05d}.jpg", quality=95)


def write_kinetics(root: Path, videos_per_class: int = 2, frames: int = 20, frame_folders: bool = False,
                   size: int = SIZE) -> Path:
    """train/ and val/ with classes 'a' and 'b' (mp4 files, or Hara's frame folders)."""
    for split in ("train", "val"):
        for c, name in enumerate(("a", "b")):
            for i in range(videos_per_class):
                data = ramp_frames(frames, base=40 * c, size=size)
                if frame_folders:
                    write_frame_folder(root / split / name / f"v{c}{i}", data)
                else:
                    (root / split / name).mkdir(parents=True, exist_ok=True)
                    write_video(root / split / name / f"v{c}{i}.mp4", data)
    return root


def test_mp4_and_frame_folders_decode_in_order(tmp_path):
    frames = ramp_frames(12)
    write_video(tmp_path / "v.mp4", frames)
    write_frame_folder(tmp_path / "v", frames)
    for path in (tmp_path / "v.mp4", tmp_path / "v"):
        assert count_frames(path) == 12
        got, short = read_frames(path, [3, 4, 9])
        assert got.shape == (3, SIZE, SIZE, 3) and not short
        assert np.abs(got.reshape(3, -1).mean(1) - [44, 52, 92]).max() < 4  # lossy codec, right frames
        looped, short = read_frames(path, [10, 11, 12, 13])  # past the end: wraps around
        assert short and np.abs(looped.reshape(4, -1).mean(1) - [100, 108, 20, 28]).max() < 4


def test_clip_indices():
    assert eval_clip_indices(24, 16, 3) == [list(range(0, 16)), list(range(4, 20)), list(range(8, 24))]
    assert eval_clip_indices(20, 16, 1) == [list(range(2, 18))]
    assert eval_clip_indices(5, 8, 2) == [[0, 1, 2, 3, 4, 0, 1, 2]] * 2  # short videos loop
    g = torch.Generator().manual_seed(0)
    starts = {train_clip_indices(24, 16, g)[0] for _ in range(200)}
    assert starts == set(range(9))  # every window start occurs, none past the end


@pytest.mark.parametrize("frame_folders", [False, True])
def test_both_layouts_give_training_and_evaluation_clips(tmp_path, frame_folders):
    root = write_kinetics(tmp_path / "k", frame_folders=frame_folders)
    train = VideoFolder(root, "train")
    assert train.classes == ["a", "b"] and len(train) == 4
    tf = clip_transform("kinetics", 16, [0.5] * 3, [0.25] * 3)
    clips = VideoClips(train, tf, frames=8, seed=3)
    x, target, name = clips[2]
    assert x.shape == (3, 8, 16, 16) and x.dtype == torch.float32
    assert target.tolist() == [1, 2, 0] and name.endswith("v10.mp4" if not frame_folders else "v10")
    # the same (seed, epoch, video) gives the same clip; the frames are consecutive
    assert torch.equal(clips[2][0], x)
    means = x.mean(dim=(0, 2, 3)) * 0.25 + 0.5  # back to [0, 1]
    steps = (means[1:] - means[:-1]) * 255
    assert torch.allclose(steps, torch.full_like(steps, 8.0), atol=3)
    windows = set()
    for epoch in range(8):
        clips.set_epoch(epoch)
        windows.add(round(float(clips[2][0].mean()), 3))
    assert len(windows) > 1  # another epoch, another random window
    val = VideoClips(VideoFolder(root, "val"), clip_transform("none", 16, [0.5] * 3, [0.25] * 3), 8, clips=3)
    assert len(val) == 12
    assert [val[i][1].tolist() for i in (0, 1, 2, 3)] == [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_kinetics_csv_lists_and_missing_videos(tmp_path, caplog):
    root = tmp_path / "k"
    for split, stems in (("train", ["abc_000010_000020", "xyz_000000_000010"]), ("val", ["val1_000003_000013"])):
        for stem, label in zip(stems, ("clapping", "dancing ballet")):
            (root / split / label.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
            write_video(root / split / label.replace(" ", "_") / f"{stem}.mp4", ramp_frames(10))
    (root / "annotations").mkdir()
    (root / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nclapping,abc,10,20,train\n"
        "dancing ballet,xyz,0,10,train\ndancing ballet,gone,5,15,train\n")
    (root / "annotations" / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nclapping,val1,3,13,validate\n")
    with caplog.at_level(logging.WARNING, logger="tdaf.video"):
        train = VideoFolder(root, "train")
    assert train.classes == ["clapping", "dancing ballet"]
    assert [(i.path.name, i.label) for i in train.items] == [("abc_000010_000020.mp4", 0),
                                                             ("xyz_000000_000010.mp4", 1)]
    assert train.missing == ["gone_000005_000015"] and "gone_000005_000015" in caplog.text
    assert [i.label for i in VideoFolder(root, "val").items] == [0]
    with pytest.raises(FileNotFoundError, match="no 'val' folder"):
        VideoFolder(tmp_path / "k" / "train", "val")


def test_short_truncated_and_unreadable_videos_are_handled_and_named(tmp_path, caplog):
    root = write_kinetics(tmp_path / "k", videos_per_class=1)
    a = root / "train" / "a"
    write_video(a / "short.mp4", ramp_frames(5))
    data = (a / "v00.mp4").read_bytes()
    (a / "cut.mp4").write_bytes(data[: len(data) // 2])
    (a / "junk.mp4").write_bytes(b"this is not a video" * 10)
    folder = VideoFolder(root, "train")
    names = [i.path.name for i in folder.items]
    clips = VideoClips(folder, clip_transform("none", 16, [0.5] * 3, [0.25] * 3), frames=8)
    with caplog.at_level(logging.WARNING, logger="tdaf.video"):
        items = {n: clips[i] for i, n in enumerate(names)}
    x, target, _ = items["short.mp4"]
    assert x.shape == (3, 8, 16, 16) and target[2] == 1  # looped and flagged
    assert "short.mp4" in caplog.text and "looped" in caplog.text
    x, _, reason = items["junk.mp4"]
    assert x is None and "junk.mp4" in reason
    x, target, reason = items["cut.mp4"]  # either unreadable (skipped) or fewer frames (looped): never a crash
    assert (x is None and "cut.mp4" in reason) or (x.shape == (3, 8, 16, 16) and target[2] == 1)


def test_multiscale_corner_crop_and_recipes():
    torch.manual_seed(0)
    video = torch.arange(2 * 3 * 40 * 60, dtype=torch.float32).view(2, 3, 40, 60)
    crop = MultiScaleCornerCrop(16)
    for _ in range(30):
        assert crop(video).shape == (2, 3, 16, 16)
    frames = ramp_frames(4, size=40)
    frames[:, :, :20] = 0  # left half dark
    flipped, sides = 0, set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = clip_transform("kinetics", 16, [0, 0, 0], [1, 1, 1])(frames)
        flipped += bool(out[..., :8].mean() > out[..., 8:].mean())
        torch.manual_seed(seed)
        kept = clip_transform("motion", 16, [0, 0, 0], [1, 1, 1])(frames)
        sides.add(bool(kept[..., :8].mean() <= kept[..., 8:].mean()))
    assert 0 < flipped < 20 and sides == {True}  # "kinetics" flips, "motion" never does
    with pytest.raises(ValueError, match="allowed for video: kinetics, motion, none"):
        clip_transform("imagenet", 16, [0] * 3, [1] * 3)


def _centroid(frame: np.ndarray) -> np.ndarray:
    w = frame.astype(np.float64)
    ys, xs = np.indices(frame.shape)
    return np.array([(w * ys).sum(), (w * xs).sum()]) / w.sum()


def test_moving_digits_class_is_the_motion(tmp_path):
    digit = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    digit[:, :8] = 0  # an asymmetric blob
    rng = np.random.default_rng(1)
    for motion, (dy, dx) in {"down": (1, 0), "up": (-1, 0), "right": (0, 1), "left": (0, -1)}.items():
        frames = render_motion(digit, motion, rng)
        assert frames.shape == (24, 48, 48)
        move = _centroid(frames[-1]) - _centroid(frames[0])
        assert np.sign(np.round(move / 5)).tolist() == [dy, dx], motion
    for motion in ("turn_ccw", "turn_cw"):
        frames = render_motion(digit, motion, rng)
        # turns in place: the mass centre only circles the patch centre (a translation moves it 18+ px)
        assert np.abs(_centroid(frames[-1]) - _centroid(frames[0])).max() < 8
        assert frames.reshape(24, -1).sum(1).min() > 0  # never leaves the canvas
    root = write_moving_digits(tmp_path / "md", {"train": 6, "val": 6})
    folder = VideoFolder(root, "val")
    assert folder.classes == sorted(MOTIONS) and len(folder) == 6
    assert count_frames(folder.items[0].path) == 24


def test_moving_digits_hard_class_is_the_one_steady_motion(tmp_path):
    digit = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    digit[:, :8] = 0  # an asymmetric blob
    blank = np.zeros_like(digit)
    rng = np.random.default_rng(1)
    for motion, (dy, dx) in video_digits.DIRECTIONS.items():
        frames = render_hard(digit, motion, [], rng)  # the target alone
        assert frames.shape == (16, 32, 32)
        move = _centroid(frames[-1]) - _centroid(frames[0])
        assert np.abs(move).max() > 2.5 and np.sign(np.round(move)).tolist() == [dy, dx], motion
    for motion in ("turn_ccw", "turn_cw"):
        frames = render_hard(digit, motion, [], rng)
        assert np.abs(_centroid(frames[-1]) - _centroid(frames[0])).max() < 3  # turns in place
    for _ in range(10):  # distractors alone (a blank target): they move every frame but go nowhere
        frames = render_hard(blank, "right", [digit, digit], rng)
        centres = np.stack([_centroid(f) for f in frames])
        assert np.abs(centres - centres.mean(0)).max() < 3
        assert all((frames[t] != frames[t + 1]).any() for t in range(15))
    with pytest.raises(ValueError, match="allowed: down, down_left"):
        render_hard(digit, "sideways", [], rng)


def test_moving_digits_hard_is_seeded_and_keeps_the_splits_apart(monkeypatch, tmp_path):
    # stand-in digits: every training digit is a flat 100, every test digit a flat 200
    fake = {split: (np.full((12, 32, 32), value, np.uint8), np.arange(12) % 10)
            for split, value in (("train", 100), ("val", 200))}
    monkeypatch.setattr(video_digits, "digits_pixels", lambda split: fake[split])
    for split, value in (("train", 100), ("val", 200)):
        videos = list(hard_videos(split, 12, seed=0))
        assert [m for m, _ in videos] == [*HARD_MOTIONS, *HARD_MOTIONS[:2]]
        assert all(f.max() == value for _, f in videos)  # only that split's digits
        again = list(hard_videos(split, 12, seed=0))
        assert all((a == b).all() for (_, a), (_, b) in zip(videos, again))
        other = list(hard_videos(split, 12, seed=1))
        assert any((a != b).any() for (_, a), (_, b) in zip(videos, other))
    monkeypatch.undo()
    root = write_moving_digits_hard(tmp_path / "mdh", {"train": 10, "val": 2})
    folder = VideoFolder(root, "train")
    assert folder.classes == sorted(HARD_MOTIONS) and len(folder) == 10
    assert count_frames(folder.items[0].path) == 16
