"""Action labels of a trained video model for video files and frame folders (``tdaf predict``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import VideoReadError, count_frames, eval_clip_indices, is_frame_folder, is_video_file, read_frames

__all__ = ["VideoList", "collect_videos", "predict_videos"]

log = logging.getLogger("tdaf.predict")


@dataclass
class VideoList:
    """Videos to run on: ``files`` (video files or frame folders), whether each was found
    inside a folder (then a bad one is skipped, not fatal), and how many other files were ignored."""

    files: list[Path] = field(default_factory=list)
    from_folder: list[bool] = field(default_factory=list)
    ignored: int = 0

    def __len__(self) -> int:
        return len(self.files)


def collect_videos(paths: Sequence[str | os.PathLike[str]]) -> VideoList:
    """Video files and frame folders named, or found (recursively) in the folders named."""
    out = VideoList()
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if is_video_file(p) or is_frame_folder(p):
            out.files.append(p)
            out.from_folder.append(False)
        elif p.is_dir():
            for q in sorted(p.rglob("*")):
                if is_video_file(q) or is_frame_folder(q):
                    out.files.append(q)
                    out.from_folder.append(True)
                elif q.is_file() and not (q.suffix.lower() == ".jpg" and q.name.startswith("image_")):
                    out.ignored += 1
        else:
            raise ValueError(f"{p}: not a video file (.mp4 .avi .mkv .webm .mov .m4v) nor a frame folder "
                             f"(image_00001.jpg ...)")
    if not out.files:
        raise ValueError(f"no video found in {', '.join(map(str, paths))}")
    return out


@torch.no_grad()
def predict_videos(
    model: torch.nn.Module,
    videos: VideoList,
    transform: Callable[[np.ndarray], torch.Tensor],
    class_names: list[str],
    *,
    frames: int,
    clips: int,
    topk: int = 5,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Top-k labels per video from the softmax scores averaged over ``clips`` uniformly spaced
    clips of ``frames`` frames. Returns ``(results, skipped)``; a bad video named directly
    raises ValueError, one found in a folder is skipped."""
    k = min(topk, len(class_names))
    model = model.to(device).eval()
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for path, from_folder in zip(videos.files, videos.from_folder):
        try:
            n = count_frames(path)
            batch = [transform(read_frames(path, idx)[0]) for idx in eval_clip_indices(n, frames, clips)]
        except (VideoReadError, OSError) as e:
            if not from_folder:
                raise ValueError(str(e)) from None
            log.warning("skipped %s", e)
            skipped.append({"file": str(path), "error": str(e)})
            continue
        if n < frames:
            log.warning("%s: %d frames for a clip of %d: looped", path, n, frames)
        x = torch.stack(batch)
        probs = torch.cat([model(x[i:i + batch_size].to(device)).float().softmax(dim=1).cpu()
                           for i in range(0, len(x), batch_size)]).mean(dim=0)
        scores, idx = probs.topk(k)
        results.append({"file": str(path), "frames": n, "clips": len(batch), "looped": n < frames,
                        "topk": [{"label": class_names[c], "index": c, "score": s}
                                 for s, c in zip(scores.tolist(), idx.tolist())]})
    return results, skipped
