"""Attention maps of a video (3D) TDAF model over the frames of a clip: one figure, a row
per stage, a column per frame, the maps of one flow (by default the last, the most
refined) resized over T, H and W to the clip and drawn over each frame.

:func:`tdaf.viz.attention_figure` draws the stages x flows grid of one frame; this module
draws how the maps move through the clip.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io.outputs import Outputs
from .viz import _matplotlib, _upsampled, denormalize, save_figure

__all__ = ["clip_frames_shown", "clip_attention_figure", "save_clip_attention_figure"]

Maps = Mapping[tuple[int, int], torch.Tensor]


def clip_frames_shown(t: int, most: int = 8) -> list[int]:
    """At most ``most`` frame indices of a clip of ``t``, evenly spaced, first and last included."""
    if t <= most:
        return list(range(t))
    return sorted({int(round(i * (t - 1) / (most - 1))) for i in range(most)})


def clip_attention_figure(
    clip: torch.Tensor,
    maps: Maps,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    flow: int | None = None,
    frames: Sequence[int] | None = None,
    title: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    normalize: bool = False,
    cell_inches: float = 1.4,
) -> tuple[Any, list[int], list[int]]:
    """The figure for a normalised clip ``(C, T, H, W)`` (or a batch of one) and its 5-D
    maps ``{(stage, flow): (1, 1, t, h, w)}``. ``flow``: the flow whose maps are drawn
    (default: the last); ``frames``: the frame indices drawn (default
    :func:`clip_frames_shown`). Returns ``(figure, stages, frames)``."""
    if clip.dim() == 5:
        clip = clip[0]
    if clip.dim() != 4:
        raise ValueError(f"clip: expected a (C, T, H, W) tensor, got shape {tuple(clip.shape)}")
    if not maps or any(m.dim() != 5 for m in maps.values()):
        raise ValueError("maps: expected the 5-D maps (B, 1, T, H, W) of a video model")
    flow = max(n for _, n in maps) if flow is None else flow
    stages = sorted(s for s, n in maps if n == flow)
    if not stages:
        raise ValueError(f"flow: got {flow}; the maps cover flows {sorted({n for _, n in maps})}")
    t, h, w = clip.shape[1:]
    frames = list(frames) if frames is not None else clip_frames_shown(t)
    rows, cols = len(stages), len(frames)
    heading = title or "TDAF attention maps over the clip"
    cw, ch = cell_inches, cell_inches * h / w
    left, right, gap, cell_title, bottom = 0.35, 1.0, 0.08, 0.3, 0.1
    top = 0.2 + 0.17 * (heading.count("\n") + 2)
    fig_w = left + cols * cw + (cols - 1) * gap + right
    fig_h = top + rows * (cell_title + ch) + bottom
    mpl = _matplotlib()
    fig = mpl.figure.Figure(figsize=(fig_w, fig_h))
    norm = mpl.colors.Normalize(0.0, 1.0)
    pictures = [denormalize(clip[:, f], mean, std) for f in frames]
    for i, stage in enumerate(stages):
        m = maps[(stage, flow)]
        for j, f in enumerate(frames):
            ax = fig.add_axes(((left + j * (cw + gap)) / fig_w, (fig_h - top - (i + 1) * (cell_title + ch)) / fig_h,
                               cw / fig_w, ch / fig_h))
            ax.set_xticks([])
            ax.set_yticks([])
            up = _upsampled(m, 0, (t, h, w), f)
            lo, hi = float(up.min()), float(up.max())
            shown = (up - lo) / (hi - lo) if normalize and hi > lo else up
            ax.imshow(pictures[j], interpolation="bilinear")
            ax.imshow(np.asarray(shown), cmap=cmap, norm=norm, alpha=alpha, interpolation="bilinear")
            ax.set_title(f"frame {f}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"stage {stage}", fontsize=8)
    grid_h = rows * (cell_title + ch) - cell_title
    bar_ax = fig.add_axes(((fig_w - right + 0.15) / fig_w, (bottom + 0.1 * grid_h) / fig_h, 0.15 / fig_w,
                           0.8 * grid_h / fig_h))
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
    bar.set_label("attention, per-map min..max" if normalize else "attention g(x)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"{heading}\nflow {flow} of the clip's {t} frames (--frame T: every flow of one frame)",
                 fontsize=9, y=1 - 0.08 / fig_h, va="top")
    return fig, stages, frames


def save_clip_attention_figure(
    clip: torch.Tensor,
    maps: Maps,
    path: str | os.PathLike[str],
    *,
    dpi: int = 100,
    metadata: Mapping[str, str] | None = None,
    outputs: Outputs | None = None,
    **kwargs: Any,
) -> Path:
    """Write :func:`clip_attention_figure` to ``path`` (atomically, through ``outputs`` when
    given); a PNG records the title, stages, flow and frames in its text chunks."""
    fig, stages, frames = clip_attention_figure(clip, maps, **kwargs)
    return save_figure(fig, path, {"Title": kwargs.get("title") or "TDAF attention maps over the clip",
                                   "tdaf:stages": ",".join(map(str, stages)),
                                   "tdaf:frames": ",".join(map(str, frames)), **(metadata or {})},
                       dpi=dpi, outputs=outputs)
