"""Video data sets in Kinetics-style layouts, and clips of them for training and evaluation.

Layouts (``--data kinetics --data-dir DATA_DIR``), per split folder ``train/`` and ``val/``:

* ``CLASS/VIDEO.mp4`` (any of .mp4 .avi .mkv .webm .mov .m4v), decoded with PyAV;
* ``CLASS/VIDEO/image_00001.jpg ...``: frame folders as Hara's ``video_jpg`` tools write them;
* with the official annotation lists ``DATA_DIR/annotations/train.csv`` and
  ``validate.csv`` (or ``val.csv``; columns ``label,youtube_id,time_start,time_end[,split]``),
  the videos and labels come from the lists: a video is found by its file (or folder) name
  ``{youtube_id}_{time_start:06d}_{time_end:06d}`` anywhere under the split folder; listed
  videos that are not on disk (often a few percent of Kinetics) are counted and logged.

Classes are the sorted class names of the training split (folder names, or CSV labels).
Training draws one random clip of ``T`` frames per video and epoch (Hara's temporal
random crop); evaluation takes ``clips`` uniformly spaced clips per video and the
evaluator averages their scores per video. A video shorter than a clip is looped (its
frames repeated until the clip is full), logged once with its name and counted; an
unreadable or truncated-to-nothing video is skipped, logged and counted (``--strict`` stops).

``moving_digits`` and ``moving_digits_hard`` (built in, no ``--data-dir``): see :mod:`tdaf.video.digits`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import DIGITS_MEAN, DIGITS_STD, subset_indices
from ..data.registry import DatasetSpec, dataset_names, dataset_spec, register_dataset
from .digits import moving_digits_hard_root, moving_digits_root, read_object_boxes
from .io import (
    VideoReadError, count_frames, eval_clip_indices, is_frame_folder, is_video_file, read_frames, train_clip_indices,
)
from .models import KINETICS_MEAN, KINETICS_STD
from .transforms import RECIPES, clip_transform

__all__ = [
    "TASK", "VideoFolder", "VideoClips", "VideoDataInfo", "build_datasets", "open_split", "dataset_list",
    "KINETICS_LAYOUT",
]

TASK = "video"
log = logging.getLogger("tdaf.video")

KINETICS_LAYOUT = (
    "expected DATA_DIR/train/CLASS/VIDEO.mp4 (or CLASS/VIDEO/image_00001.jpg frame folders) and the same under "
    "DATA_DIR/val, optionally with DATA_DIR/annotations/train.csv and validate.csv (Kinetics lists)"
)
_CSV_NAMES = {"train": ("train.csv",), "val": ("validate.csv", "val.csv")}


@dataclass(frozen=True)
class VideoItem:
    path: Path
    label: int


class VideoFolder:
    """One split of a Kinetics-style folder: the videos, their labels and the class names."""

    def __init__(self, data_dir: str | os.PathLike[str] | None, split: str = "train") -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split: got {split!r}; allowed: train, val")
        if data_dir is None:
            raise ValueError(f"--data-dir: required for this data set; {KINETICS_LAYOUT}")
        self.root = Path(data_dir).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"--data-dir: {self.root} is not a folder; {KINETICS_LAYOUT}")
        self.split = split
        self.missing: list[str] = []
        self._boxes: tuple[tuple[int, int], dict[str, list[list[float]]]] | None = None
        self._boxes_read = False  # object_boxes.json is read when first asked for
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"--data-dir: {self.root} has no '{split}' folder; {KINETICS_LAYOUT}")
        train_csv, split_csv = self._csv("train"), self._csv(split)
        if split_csv is not None:
            self.classes = sorted({row["label"] for row in _read_csv(train_csv or split_csv)})
            self.items = self._from_csv(folder, split_csv)
        else:
            self.classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir()) \
                if (self.root / "train").is_dir() else []
            self.items = self._from_folders(folder)
        if not self.items:
            raise FileNotFoundError(f"--data-dir: no video found in {folder}; {KINETICS_LAYOUT}")
        if self.missing:
            log.warning("%s: %d listed videos are not on disk (left out), e.g. %s", folder, len(self.missing),
                        ", ".join(self.missing[:3]))

    def _csv(self, split: str) -> Path | None:
        for name in _CSV_NAMES[split]:
            p = self.root / "annotations" / name
            if p.is_file():
                return p
        return None

    def _from_folders(self, folder: Path) -> list[VideoItem]:
        index = {c: i for i, c in enumerate(self.classes)}
        items = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name not in index:
                raise ValueError(f"--data-dir: class folder {class_dir} is not among the training classes "
                                 f"({len(self.classes)} in {self.root / 'train'})")
            for p in sorted(class_dir.iterdir()):
                if is_video_file(p) or is_frame_folder(p):
                    items.append(VideoItem(p, index[class_dir.name]))
        return items

    def _from_csv(self, folder: Path, csv_path: Path) -> list[VideoItem]:
        on_disk: dict[str, Path] = {}
        for class_dir in (p for p in folder.iterdir() if p.is_dir()):
            for p in class_dir.iterdir():
                if is_video_file(p) or p.is_dir():
                    on_disk[p.stem if p.is_file() else p.name] = p
        index = {c: i for i, c in enumerate(self.classes)}
        items = []
        for row in _read_csv(csv_path):
            if row["label"] not in index:
                raise ValueError(f"{csv_path}: label {row['label']!r} is not among the {len(self.classes)} training "
                                 f"classes")
            stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            if stem in on_disk:
                items.append(VideoItem(on_disk[stem], index[row["label"]]))
            else:
                self.missing.append(stem)
        return items

    def __len__(self) -> int:
        return len(self.items)

    def object_boxes(self, video: int) -> tuple[tuple[int, int], list[list[float]]] | None:
        """``((H, W), boxes)``: the frame size of video ``video`` and the box ``[x0, y0, x1, y1]``
        (pixels) of the object in each of its frames, where the split folder's
        ``object_boxes.json`` gives them (the moving digits write one, :mod:`tdaf.video.digits`);
        None where it does not (Kinetics)."""
        if not self._boxes_read:
            self._boxes, self._boxes_read = read_object_boxes(self.root / self.split), True
        if self._boxes is None:
            return None
        size, boxes = self._boxes
        found = boxes.get(self.items[video].path.relative_to(self.root / self.split).as_posix())
        return None if found is None else (size, found)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: columns {sorted(rows[0])}; a Kinetics list needs {', '.join(sorted(need))}")
    return rows


class VideoClips(Dataset):
    """Clips of a :class:`VideoFolder`, transformed.

    ``clips=None`` (training): item ``i`` is one random clip of video ``i``, its temporal
    and spatial draws seeded by ``(seed, epoch, i)`` like :class:`tdaf.data.TransformedDataset`.
    ``clips=K`` (evaluation): item ``i`` is clip ``i % K`` of video ``i // K``.
    Items are ``(clip (3, T, H, W) or None, target, name)`` with ``target`` the long tensor
    ``[label, video index, looped]`` (``looped``: the video was shorter than a clip).
    """

    def __init__(self, folder: VideoFolder, transform: Callable[[np.ndarray], torch.Tensor], frames: int,
                 clips: int | None = None, seed: int = 0, indices: list[int] | None = None) -> None:
        if frames < 1:
            raise ValueError(f"frames: got {frames}; allowed: >= 1")
        if clips is not None and clips < 1:
            raise ValueError(f"clips: got {clips}; allowed: >= 1")
        self.folder = folder
        self.transform = transform
        self.frames = frames
        self.clips = clips
        self.seed = int(seed)
        self.videos = list(range(len(folder))) if indices is None else list(indices)
        self.epoch = 0
        self._counts: dict[int, int] = {}
        self._warned: set[int] = set()

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos) * (self.clips or 1)

    def video_of(self, i: int) -> int:
        """The index in :attr:`folder` of item ``i``'s video."""
        return self.videos[i // (self.clips or 1)]

    def frame_indices(self, i: int) -> list[int] | None:
        """The frames of its video that evaluation item ``i`` reads, in clip order (looped
        where the video is shorter than a clip); None for a training item (a random clip)."""
        if self.clips is None:
            return None
        return eval_clip_indices(self.frame_count(self.video_of(i)), self.frames, self.clips)[i % self.clips]

    def frame_count(self, video: int) -> int:
        """Frames of video ``video`` (counted once)."""
        n = self._counts.get(video)
        if n is None:
            n = self._counts[video] = count_frames(self.folder.items[video].path)
        return n

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor, str]:
        video = self.video_of(i)
        item = self.folder.items[video]
        try:
            n = self.frame_count(video)
            if self.clips is None:
                key = np.random.SeedSequence([self.seed, self.epoch, video]).generate_state(2, np.uint32)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(key[0]) << 31 | int(key[1]) >> 1)
                    indices = train_clip_indices(n, self.frames)
                    frames, truncated = read_frames(item.path, indices)
                    clip = self.transform(frames)
            else:
                indices = self.frame_indices(i)
                assert indices is not None
                frames, truncated = read_frames(item.path, indices)
                clip = self.transform(frames)
        except (VideoReadError, OSError) as e:
            return None, torch.tensor([item.label, video, 0]), str(e) if str(item.path) in str(e) else f"{item.path}: {e}"
        looped = n < self.frames or truncated
        if looped and video not in self._warned:
            self._warned.add(video)
            log.warning("%s: %s frames for a clip of %d: looped", item.path,
                        f"{n}" if not truncated else "fewer decodable", self.frames)
        return clip, torch.tensor([item.label, video, int(looped)]), str(item.path)


@dataclass
class VideoDataInfo:
    """What a video checkpoint must know about its data."""

    name: str
    class_names: list[str]
    mean: list[float]
    std: list[float]
    input_size: list[int]  # [3, T, H, W]
    recipe: str
    clips: int

    def meta(self) -> dict[str, Any]:
        return dict(class_names=list(self.class_names), mean=list(self.mean), std=list(self.std),
                    input_size=list(self.input_size), resize=self.input_size[-1], data=self.name,
                    recipe=self.recipe, clips=self.clips)


def _defaults(size: int, mean: tuple[float, ...], std: tuple[float, ...], recipe: str, clips: int) -> dict[str, Any]:
    return dict(size=size, mean=tuple(mean), std=tuple(std), recipe=recipe, clips=clips)


register_dataset(DatasetSpec(
    "kinetics", TASK, lambda split, data_dir: VideoFolder(data_dir, split), needs_dir=True,
    help="Kinetics layout: train|val/CLASS/VIDEO.mp4 or frame folders, optional annotations/*.csv",
    defaults=_defaults(112, KINETICS_MEAN, KINETICS_STD, "kinetics", 10)))
register_dataset(DatasetSpec(
    "moving_digits", TASK, lambda split, data_dir: VideoFolder(moving_digits_root(), split), needs_dir=False,
    help="handwritten digits moving left/right/up/down or rotating, as .mp4 clips, built in (no download)",
    defaults=_defaults(32, DIGITS_MEAN, DIGITS_STD, "motion", 3)))
register_dataset(DatasetSpec(
    "moving_digits_hard", TASK, lambda split, data_dir: VideoFolder(moving_digits_hard_root(), split),
    needs_dir=False,
    help="one handwritten digit moving (8 directions) or turning among two wobbling ones, 16 frames of 32x32, "
         "built in (no download)",
    # 16-frame videos: one clip is the whole video; no crop (it could cut the moving digit out)
    defaults=_defaults(32, DIGITS_MEAN, DIGITS_STD, "none", 1)))


def dataset_list() -> list[str]:
    return dataset_names(TASK)


def open_split(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> VideoFolder:
    spec = dataset_spec(name, TASK)
    if data_dir is not None and not spec.needs_dir:
        others = " / ".join(n for n in dataset_list() if dataset_spec(n, TASK).needs_dir)
        raise ValueError(f"--data-dir: {name} is built in and reads no folder; drop --data-dir or use --data {others}")
    return spec.open(split, data_dir)


def data_info(name: str, class_names: list[str], frames: int, input_size: int | None = None,
              recipe: str | None = None) -> VideoDataInfo:
    d = dataset_spec(name, TASK).defaults
    size = d["size"] if input_size is None else int(input_size)
    if size < 1:
        raise ValueError(f"input_size: got {input_size}; allowed: an int >= 1")
    recipe = d["recipe"] if recipe is None else recipe
    if recipe not in RECIPES:
        raise ValueError(f"recipe: got {recipe!r}; allowed for video: {', '.join(RECIPES)}")
    return VideoDataInfo(name, list(class_names), list(d["mean"]), list(d["std"]), [3, frames, size, size], recipe,
                         int(d["clips"]))


def build_datasets(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    frames: int,
    input_size: int | None = None,
    recipe: str | None = None,
    seed: int = 0,
    train_subset: int | None = None,
    val_subset: int | None = None,
) -> tuple[VideoClips, VideoClips, VideoDataInfo]:
    """Training clips (one random clip per video) and validation clips (``clips`` per video)."""
    train_raw = open_split(name, "train", data_dir)
    val_raw = open_split(name, "val", data_dir)
    if val_raw.classes != train_raw.classes:
        raise ValueError(f"--data-dir: the val split's classes differ from the training split's "
                         f"({len(val_raw.classes)} vs {len(train_raw.classes)})")
    info = data_info(name, train_raw.classes, frames, input_size, recipe)
    size = info.input_size[-1]
    train = VideoClips(train_raw, clip_transform(info.recipe, size, info.mean, info.std), frames, None, seed,
                       subset_indices(len(train_raw), train_subset))
    val = VideoClips(val_raw, clip_transform("none", size, info.mean, info.std), frames, info.clips, seed,
                     subset_indices(len(val_raw), val_subset))
    return train, val, info
