"""Reading frames of one video: a video file (decoded with PyAV) or a folder of frames as
Hara's tools write them (``VIDEO/image_00001.jpg``, ...), and the clip indices of
training (one random clip) and evaluation (uniformly spaced clips).

Videos shorter than a clip are *looped* (Hara's ``LoopPadding``: frames 0..n-1 repeated
until the clip is full); the reader says so, and the data set logs and counts it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io.optional import require

__all__ = [
    "VIDEO_EXTENSIONS", "FRAME_GLOB", "is_video_file", "is_frame_folder", "count_frames", "read_frames",
    "train_clip_indices", "eval_clip_indices", "VideoReadError",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
FRAME_GLOB = "image_*.jpg"


class VideoReadError(ValueError):
    """A video (file or frame folder) that cannot be read; the message names it."""


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and next(path.glob(FRAME_GLOB), None) is not None


def _frame_files(path: Path) -> list[Path]:
    return sorted(path.glob(FRAME_GLOB))


def _open(path: Path):  # type: ignore[no-untyped-def]
    av = require("av", "video", "reading videos (PyAV)")

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoReadError(f"{path}: cannot open the video ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: holds no video stream")
    return container


def count_frames(path: str | os.PathLike[str]) -> int:
    """Frames of a video file (the container's count, or a full decode when it has none) or
    of a frame folder."""
    path = Path(path)
    if path.is_dir():
        n = len(_frame_files(path))
        if n == 0:
            raise VideoReadError(f"{path}: a frame folder without {FRAME_GLOB} files")
        return n
    container = _open(path)
    try:
        n = int(container.streams.video[0].frames or 0)
        if n <= 0:
            n = sum(1 for _ in _decode(container, path))
    finally:
        container.close()
    if n == 0:
        raise VideoReadError(f"{path}: no decodable frame")
    return n


def _decode(container, path: Path):  # type: ignore[no-untyped-def]
    av = require("av", "video", "reading videos (PyAV)")

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError:
        # A truncated or damaged file: the frames decoded so far are kept; the caller
        # finds that it got fewer than it asked for.
        return


def read_frames(path: str | os.PathLike[str], indices: list[int]) -> tuple[np.ndarray, bool]:
    """The frames ``indices`` (0-based) as a uint8 array ``(T, H, W, 3)``, and whether the
    video held fewer frames than asked for: a file that decodes shorter than its container
    claims (truncated) has its missing indices wrapped around what it holds, as a short
    video is looped."""
    path = Path(path)
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise VideoReadError(f"{path}: a frame folder without {FRAME_GLOB} files")
        frames = []
        for i in indices:
            f = files[i % len(files)]
            try:
                with Image.open(f) as im:
                    frames.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise VideoReadError(f"{f}: cannot decode the frame ({e})") from None
        return _stack(frames, path), max(indices) >= len(files)
    got, decoded = _decode_wanted(path, set(indices))
    if decoded == 0:
        raise VideoReadError(f"{path}: no decodable frame (truncated or damaged file)")
    if decoded > max(indices):
        return _stack([got[i] for i in indices], path), False
    wrapped = [i % decoded for i in indices]
    got, _ = _decode_wanted(path, set(wrapped))
    return _stack([got[i] for i in wrapped], path), True


def _decode_wanted(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """The ``wanted`` frames that decode, and how many frames were decoded (it stops after
    the last wanted one)."""
    reformatter = require("av.video.reformatter", "video", "reading videos (PyAV)")
    VideoReformatter = reformatter.VideoReformatter

    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    # One converter for the whole video: frame.to_ndarray(format=...) builds a new one per
    # frame, which costs 10x the decoding of a small video.
    rgb = VideoReformatter()
    container = _open(path)
    n = 0
    try:
        for n, frame in enumerate(_decode(container, path), start=1):
            if n - 1 in wanted:
                got[n - 1] = rgb.reformat(frame, format="rgb24").to_ndarray()
            if n - 1 >= last:
                break
    finally:
        container.close()
    return got, n


def _stack(frames: list[np.ndarray], path: Path) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoReadError(f"{path}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames)


def train_clip_indices(num_frames: int, length: int, generator: torch.Generator | None = None) -> list[int]:
    """A random window of ``length`` consecutive frames (Hara's temporal random crop); a
    shorter video is looped."""
    if num_frames >= length:
        start = int(torch.randint(0, num_frames - length + 1, (1,), generator=generator))
        return list(range(start, start + length))
    return [i % num_frames for i in range(length)]


def eval_clip_indices(num_frames: int, length: int, clips: int) -> list[list[int]]:
    """``clips`` windows of ``length`` frames whose starts are uniformly spaced from the first
    to the last possible start (the centre one for ``clips=1``); a shorter video is looped."""
    if num_frames < length:
        return [[i % num_frames for i in range(length)]] * clips
    span = num_frames - length
    starts = [span // 2] if clips == 1 else [round(k * span / (clips - 1)) for k in range(clips)]
    return [list(range(s, s + length)) for s in starts]
