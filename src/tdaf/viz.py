"""Attention pictures of a TDAF model, like the paper's Fig. 3b/c (§3.2, §4).

The grid has one row per stage l that has an ANAR (l = 1..L-1) and one column per flow
n = 1..N: the "top-down" direction of the paper runs along a row (flow 2's coarse map,
refined by the later flows, Fig. 3b) and the "bottom-up" direction down a column
(stage 1's fine map to the deepest stage's coarse one, Fig. 3c). Each map, a sigmoid
output in (0, 1) recorded with :func:`tdaf.record_attention`, is upsampled (bilinear)
to the input's size and drawn over the de-normalised input with a colour map. Each
column is headed with its flow and the resolution that flow sees (flow N the full input,
flow n one 2^(N-n)-th of it, Eq. 2), each row with its stage, each cell titled with its
stage and flow, the map's own size and min-max; one colour bar gives the 0..1 scale of
the gates.

Cells without a map are still drawn, so the grid always reads stages x flows:

* flow 1 (the first flow) has no attention at all, by construction of Eq. 5: its cells
  show the input alone, titled "input, no attention";
* flow n > 1 has no map at stage l when flow n-1 did not run stage l (Eq. 1: early
  flows are shorter); those cells show the input in grey, titled "not gated".

Maps of a video model are 5-D ``(B, 1, T, H, W)``; they are resized over T, H and W to
the clip's size and one frame is drawn (``frame``).

Figures are built with matplotlib's object API (``Figure`` + Agg canvas), so nothing
here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .attention import record_attention
from .classification.data.transforms import eval_transform
from .engine.checkpoint import model_from_checkpoint
from .io.outputs import Outputs
from .io.optional import require

__all__ = [
    "AttentionGrid", "attention_grid", "attention_figure", "save_attention_figure", "compute_attention",
    "denormalize", "maps_to_arrays", "save_maps", "MAP_FORMATS", "figure_title", "save_attention_figures",
    "checkpoint_attention_figures",
]

Maps = Mapping[tuple[int, int], torch.Tensor]

MAP_FORMATS = ("npy", "npz", "pt")


def _matplotlib() -> Any:
    """matplotlib (with its figure, colors and cm modules), imported when a picture is drawn."""
    mpl = require("matplotlib", "viz", "attention pictures")
    for sub in ("figure", "colors", "cm"):
        require(f"matplotlib.{sub}", "viz", "attention pictures")
    return mpl


@dataclass
class AttentionGrid:
    """The layout of an attention figure: ``stages`` (rows) x ``flows`` (columns), and
    what each cell shows: ``"map"``, ``"first"`` (flow 1: no attention) or ``"none"``
    (flow n-1 did not run this stage)."""

    stages: list[int]
    flows: list[int]
    cells: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.stages), len(self.flows)


def attention_grid(maps: Maps, flows: int | None = None) -> AttentionGrid:
    """Rows and columns for ``maps`` (keys ``(stage, flow)``, 1-based). ``flows`` is the
    model's N (default: the largest flow in ``maps``)."""
    if not maps:
        raise ValueError(
            "maps: no attention maps were recorded (a TDAF model with flows=1 has none; use flows >= 2)"
        )
    for key in maps:
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, int) and k >= 1 for k in key)):
            raise ValueError(f"maps: keys must be (stage, flow) pairs of 1-based ints, got {key!r}")
    n_flows = max(f for _, f in maps) if flows is None else int(flows)
    stages = sorted({s for s, _ in maps})
    grid = AttentionGrid(stages=stages, flows=list(range(1, n_flows + 1)))
    for s in stages:
        for n in grid.flows:
            grid.cells[(s, n)] = "map" if (s, n) in maps else ("first" if n == 1 else "none")
    return grid


def compute_attention(model: nn.Module, x: torch.Tensor) -> tuple[Any, dict[tuple[int, int], torch.Tensor]]:
    """Run ``model`` on ``x`` (no grad) and return ``(output, maps)`` with the maps of
    :func:`tdaf.record_attention` (``(B, 1, H, W)`` or ``(B, 1, T, H, W)``, on the CPU)."""
    with torch.no_grad(), record_attention(model) as recorded:
        out = model(x)
    return out, {k: v.float().cpu() for k, v in recorded.items()}


def denormalize(x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """A normalised ``(C, H, W)`` tensor back to an ``(H, W, 3)`` float image in [0, 1]."""
    if x.dim() != 3:
        raise ValueError(f"image: expected a (C, H, W) tensor, got shape {tuple(x.shape)}")
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        c = x.shape[0]
        m = torch.as_tensor(list(mean), dtype=x.dtype)[:c].view(-1, 1, 1)
        s = torch.as_tensor(list(std), dtype=x.dtype)[:c].view(-1, 1, 1)
        x = x * s + m
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x[:3].clamp(0, 1).permute(1, 2, 0).numpy()


def _as_picture(image: Any, mean: Sequence[float] | None, std: Sequence[float] | None,
                index: int, frame: int | None, video: bool) -> tuple[np.ndarray, int | None]:
    """The picture to draw, (H, W, 3) in [0, 1], and the clip length T for a video input."""
    want = "a clip: (C, T, H, W) or (B, C, T, H, W) tensor, or (T, H, W, 3) array" if video else (
        "an image: (C, H, W) or (B, C, H, W) tensor, (H, W, 3) array or PIL image")
    if isinstance(image, Image.Image) and not video:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, None
    if isinstance(image, np.ndarray):
        arr = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
        if video and arr.ndim == 4 and arr.shape[-1] == 3:
            t = arr.shape[0]
            return np.clip(arr[_frame_index(frame, t)], 0, 1), t
        if not video and arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if not video and arr.ndim == 3 and arr.shape[2] in (3, 4):
            return np.clip(arr[..., :3], 0, 1), None
    if isinstance(image, torch.Tensor):
        x = image
        if x.dim() == (5 if video else 4):  # a batch
            if not -x.shape[0] <= index < x.shape[0]:
                raise ValueError(f"index: got {index}; the image batch holds {x.shape[0]}")
            x = x[index]
        if video and x.dim() == 4:
            t = x.shape[1]
            return denormalize(x[:, _frame_index(frame, t)], mean, std), t
        if not video and x.dim() == 3:
            return denormalize(x, mean, std), None
    shape = getattr(image, "shape", None) or getattr(image, "size", None)
    raise ValueError(f"image: expected {want}; got {type(image).__name__} of shape {shape}")


def _frame_index(frame: int | None, t: int) -> int:
    if frame is None:
        return t // 2
    if not -t <= frame < t:
        raise ValueError(f"frame: got {frame}; allowed: 0..{t - 1} (the clip has {t} frames)")
    return frame % t


def _upsampled(m: torch.Tensor, index: int, size: tuple[int, ...], frame: int | None) -> np.ndarray:
    """One map, resized to the input (bilinear; trilinear over T, H, W for video)."""
    if m.dim() not in (4, 5) or m.shape[1] != 1:
        raise ValueError(f"maps: expected (B, 1, H, W) or (B, 1, T, H, W) tensors, got shape {tuple(m.shape)}")
    if not -m.shape[0] <= index < m.shape[0]:
        raise ValueError(f"index: got {index}; the maps hold a batch of {m.shape[0]}")
    one = m[index].unsqueeze(0).float()
    if one.dim() == 5:
        if len(size) != 3:
            raise ValueError("maps: 5-D (video) maps need a clip as image: (C, T, H, W) tensor or (T, H, W, 3) array")
        up = F.interpolate(one, size=size, mode="trilinear", align_corners=False)[0, 0]
        return up[_frame_index(frame, size[0])].clamp(0, 1).numpy()
    up = F.interpolate(one, size=size[-2:], mode="bilinear", align_corners=False)[0, 0]
    return up.clamp(0, 1).numpy()


def attention_figure(
    image: Any,
    maps: Maps,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    index: int = 0,
    frame: int | None = None,
    flows: int | None = None,
    title: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    normalize: bool = False,
    cell_inches: float = 2.0,
) -> tuple[Any, AttentionGrid]:
    """Build the stages x flows attention figure (paper Fig. 3b/c) for one image.

    Args:
        image: the model input: a normalised ``(C, H, W)`` tensor (de-normalised with
            ``mean``/``std``), a batch ``(B, C, H, W)`` (``index`` picks one), a video clip
            ``(C, T, H, W)`` / ``(B, C, T, H, W)``, or a PIL image / ``(H, W, 3)`` array.
        maps: ``{(stage, flow): (B, 1, h, w) or (B, 1, t, h, w)}`` from
            :func:`compute_attention` or :func:`tdaf.record_attention`.
        index: which batch element to draw.
        frame: video only, the clip frame to draw (default: the middle one).
        flows: the model's number of flows N (default: the largest flow in ``maps``).
        title: figure title (e.g. the predicted label).
        cmap, alpha: colour map and its opacity over the input.
        normalize: stretch each map to its own min..max (shows structure in nearly flat
            maps); by default every map uses the same 0..1 scale, so cells compare.

    Returns ``(figure, grid)``; ``grid`` says what each cell shows.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: got {alpha}; allowed: 0..1")
    grid = attention_grid(maps, flows)
    video = any(m.dim() == 5 for m in maps.values())
    picture, clip_len = _as_picture(image, mean, std, index, frame, video)
    h, w = picture.shape[:2]
    size: tuple[int, ...] = (clip_len, h, w) if clip_len is not None else (h, w)
    grey = np.repeat(picture.mean(axis=2, keepdims=True), 3, axis=2) * 0.6 + 0.2
    rows, cols = grid.shape
    heading = title or "TDAF attention maps"
    # A fixed layout in inches (matplotlib's constrained layout costs 2-3x the drawing time).
    cw, ch = cell_inches, cell_inches * h / w
    left, right, gap, cell_title, bottom = 0.35, 1.0, 0.12, 0.42, 0.1
    header = 0.22  # the column headers: "flow n (1/2 res)"
    top = 0.2 + 0.17 * (heading.count("\n") + 1) + header
    fig_w = left + cols * cw + (cols - 1) * gap + right
    fig_h = top + rows * (cell_title + ch) + bottom
    mpl = _matplotlib()
    fig = mpl.figure.Figure(figsize=(fig_w, fig_h))
    axes = [[fig.add_axes(((left + j * (cw + gap)) / fig_w, (fig_h - top - (i + 1) * (cell_title + ch)) / fig_h,
                           cw / fig_w, ch / fig_h)) for j in range(cols)] for i in range(rows)]
    norm = mpl.colors.Normalize(0.0, 1.0)
    for i, stage in enumerate(grid.stages):
        for j, flow in enumerate(grid.flows):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            kind = grid.cells[(stage, flow)]
            if kind == "map":
                m = maps[(stage, flow)]
                up = _upsampled(m, index, size, frame)
                lo, hi = float(up.min()), float(up.max())
                shown = (up - lo) / (hi - lo) if normalize and hi > lo else up
                ax.imshow(picture, interpolation="bilinear")
                ax.imshow(shown, cmap=cmap, norm=norm, alpha=alpha, interpolation="bilinear")
                native = "x".join(str(s) for s in m.shape[2:])
                ax.set_title(f"stage {stage}, flow {flow}\n{native} map, {lo:.2f}-{hi:.2f}", fontsize=8)
            elif kind == "first":
                ax.imshow(picture, interpolation="bilinear")
                ax.set_title(f"stage {stage}, flow 1\ninput, no attention", fontsize=8)
            else:
                ax.imshow(grey, interpolation="bilinear")
                ax.set_title(f"stage {stage}, flow {flow}\nnot gated: flow {flow - 1} has no stage {stage}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"stage {stage}", fontsize=10, fontweight="bold")
    n_flows = grid.flows[-1]
    for j, flow in enumerate(grid.flows):
        # flow n sees the input down-sampled n_flows - n times by 2 (paper Eq. 2)
        res = "full res" if flow == n_flows else f"1/{2 ** (n_flows - flow)} res"
        fig.text((left + j * (cw + gap) + cw / 2) / fig_w, 1 - (top - 0.04) / fig_h, f"flow {flow} ({res})",
                 ha="center", va="bottom", fontsize=10, fontweight="bold")
    grid_h = rows * (cell_title + ch) - cell_title
    bar_ax = fig.add_axes(((fig_w - right + 0.15) / fig_w, (bottom + 0.1 * grid_h) / fig_h, 0.15 / fig_w,
                           0.8 * grid_h / fig_h))
    bar_ax.set_label("<colorbar>")  # the label matplotlib gives a colour bar axes it makes itself
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
    bar.set_label("attention, each map stretched to its min..max" if normalize
                  else "attention gate g(x), 0..1 (sigmoid)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    fig.suptitle(heading, fontsize=10, y=1 - 0.08 / fig_h, va="top")
    return fig, grid


def save_attention_figure(
    image: Any,
    maps: Maps,
    path: str | os.PathLike[str],
    *,
    dpi: int = 100,
    metadata: Mapping[str, str] | None = None,
    outputs: Outputs | None = None,
    **kwargs: Any,
) -> Path:
    """Write the attention figure of :func:`attention_figure` to ``path`` (PNG, or any
    format matplotlib writes, by suffix). The PNG's text chunks record the title, the
    grid (``tdaf:stages``, ``tdaf:flows``) and any ``metadata`` (model, checkpoint, ...).

    ``kwargs`` go to :func:`attention_figure` (``mean``, ``std``, ``index``, ``frame``,
    ``title``, ``cmap``, ``alpha``, ``normalize``, ``flows``). The file is written atomically,
    through ``outputs`` when given (a command's :class:`tdaf.io.Outputs`). Returns the path.
    """
    fig, grid = attention_figure(image, maps, **kwargs)
    return save_figure(fig, path, {"Title": kwargs.get("title") or "TDAF attention maps",
                                   "tdaf:stages": ",".join(map(str, grid.stages)),
                                   "tdaf:flows": ",".join(map(str, grid.flows)), **(metadata or {})},
                       dpi=dpi, outputs=outputs)


def save_figure(fig: Any, path: str | os.PathLike[str], info: Mapping[str, Any], *, dpi: int = 100,
                outputs: Outputs | None = None) -> Path:
    """Write a matplotlib figure to ``path`` in the format its suffix names (default PNG),
    atomically (through ``outputs`` when given); a PNG records ``info`` in its text chunks."""
    p = Path(path)
    fmt = p.suffix.lstrip(".").lower() or "png"
    meta = {"Software": "tdaf", **{str(k): str(v) for k, v in info.items()}} if fmt == "png" else None
    return _write(outputs, p, lambda f: fig.savefig(f, dpi=dpi, metadata=meta, format=fmt))


def _write(outputs: Outputs | None, path: Path, save: Any) -> Path:
    """``save(file object)`` to ``path`` atomically: through a command's ``outputs`` (which
    checks the name and renames everything when the command succeeded), or on its own."""
    own = outputs is None
    if outputs is None:
        outputs = Outputs(overwrite=True)
    if not outputs.claimed(path):
        outputs.claim(path, "--out")
    outputs.save_with(path, save)
    if own:
        outputs.commit()
    return path


def maps_to_arrays(maps: Maps, index: int = 0) -> dict[str, np.ndarray]:
    """Raw maps of one batch element at their own resolution, named ``stage{l}_flow{n}``:
    ``(1, h, w)`` or ``(1, t, h, w)`` float32 arrays."""
    return {f"stage{s}_flow{n}": maps[(s, n)][index].float().cpu().numpy() for s, n in sorted(maps)}


def save_maps(maps: Maps, out_dir: str | os.PathLike[str], stem: str, fmt: str, index: int = 0,
              outputs: Outputs | None = None) -> list[Path]:
    """Save the raw maps of one image: ``npy`` (one ``STEM.stage{l}_flow{n}.npy`` per map),
    ``npz`` (one ``STEM.maps.npz``) or ``pt`` (one ``STEM.maps.pt`` dict of tensors, loads
    with ``torch.load(weights_only=True)``)."""
    if fmt not in MAP_FORMATS:
        raise ValueError(f"--save-maps: got {fmt!r}; allowed: {', '.join(MAP_FORMATS)}")
    out = Path(out_dir)
    arrays = maps_to_arrays(maps, index)
    if fmt == "npy":
        return [_write(outputs, out / f"{stem}.{name}.npy", lambda f, a=arr: np.save(f, a))
                for name, arr in arrays.items()]
    if fmt == "npz":
        return [_write(outputs, out / f"{stem}.maps.npz", lambda f: np.savez(f, **arrays))]
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return [_write(outputs, out / f"{stem}.maps.pt", lambda f: torch.save(tensors, f))]


def figure_title(heading: str, model_name: str, output: Any = None, class_names: Sequence[str] | None = None,
                 trained: bool = True) -> str:
    """Title lines: ``heading - model``, the predicted label and probability when
    ``output`` is a classifier's ``(1, K)`` logits, and a warning for untrained weights."""
    parts = [f"{heading} - {model_name}"]
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] > 1:
        prob, idx = torch.softmax(output.float(), dim=1)[0].max(0)
        i = int(idx)
        label = str(class_names[i]) if class_names and i < len(class_names) else f"class {i}"
        parts.append(f"predicted: {label} ({float(prob):.2f})")
    if not trained:
        parts.append("UNTRAINED model (random weights): maps mean nothing")
    return "\n".join(parts)


def save_attention_figures(
    model: nn.Module,
    meta: Mapping[str, Any],
    images: Iterable[tuple[str, Image.Image]],
    out_dir: str | os.PathLike[str],
    *,
    trained: bool = True,
    device: torch.device | str = "cpu",
    save_maps_as: str | None = None,
    metadata: Mapping[str, str] | None = None,
    progress: Any = None,
    outputs: Outputs | None = None,
    **kwargs: Any,
) -> list[Path]:
    """One attention figure per ``(name, PIL image)``: ``OUT/NAME.attention.png``, the
    image preprocessed with ``meta`` (:func:`tdaf.classification.data.eval_transform`), titled
    with the prediction of a classifier. With ``save_maps_as`` (``npy``/``npz``/``pt``)
    the raw maps too. ``progress`` is called once per image (e.g. a tqdm ``update``).
    ``kwargs`` go to :func:`attention_figure`. Each file is written atomically, through
    ``outputs`` when given (a command's :class:`tdaf.io.Outputs`). Returns the written paths."""
    transform = eval_transform(dict(meta))
    out = Path(out_dir)
    model = model.to(device).eval()
    name = str(meta.get("model_name", type(model).__name__))
    written: list[Path] = []
    for stem, img in images:
        x = transform(img)[None].to(device)
        output, maps = compute_attention(model, x)
        title = figure_title(stem, name, output.cpu() if isinstance(output, torch.Tensor) else None,
                             meta.get("class_names"), trained)
        written.append(save_attention_figure(
            x.cpu(), maps, out / f"{stem}.attention.png", mean=meta["mean"], std=meta["std"], title=title,
            metadata=dict(metadata or {}, **{"tdaf:image": stem}), outputs=outputs, **kwargs))
        if save_maps_as:
            written += save_maps(maps, out, stem, save_maps_as, outputs=outputs)
        if progress is not None:
            progress()
    return written


def checkpoint_attention_figures(checkpoint: str | os.PathLike[str], images: Iterable[tuple[str, Image.Image]],
                                 out_dir: str | os.PathLike[str], **kwargs: Any) -> list[Path]:
    """:func:`save_attention_figures` for a tdaf checkpoint (e.g. the demo's trained
    TDAF model on a few test digits)."""
    model, meta = model_from_checkpoint(checkpoint)
    kwargs.setdefault("metadata", {"tdaf:checkpoint": Path(checkpoint).name})
    return save_attention_figures(model, meta, images, out_dir, **kwargs)
