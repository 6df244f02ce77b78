"""``tdaf attention``: the paper's Fig. 3b/c for your own images (stages x flows grid)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..engine.monitor import checkpoint_attention_stats
from ..engine.options import EvalOptions
from ..engine.task import AttentionItem, Task, get_task, task_names
from ..io.files import json_safe
from ..io.outputs import Outputs
from ..io.progress import progress_bar
from ..r2dns import R2DNS
from ..viz import MAP_FORMATS, figure_title, save_attention_figure, save_maps
from ..viz_clip import save_clip_attention_figure
from ._common import (
    add_device_arg, add_input_size_arg, add_overwrite_arg, add_progress_arg, add_threads_arg, apply_threads,
    resolve_device,
)
from ._load import LoadedModel, add_model_args, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="draw a TDAF model's attention maps over images (paper Fig. 3b/c)",
        description="For each input, write OUT/STEM.attention.png: one row per stage with an ANAR "
        "(1..L-1), one column per flow (1..N); each ANAR map g(x) is upsampled (bilinear) to the input "
        "size and drawn over the input. Flow 1 has no attention (its cells show the input alone) and a "
        "stage that the previous flow did not run is not gated (grey cell). Every task's TDAF model: a "
        "classifier (the title gives the predicted label), a detector (the whole image as the detector "
        "resizes it), a pose model (the whole image as one person crop), a video model (video files, frame "
        "folders, or image files as the frames of one clip): its figure is a strip, one row per stage, one "
        "column per frame, of the last flow's maps; --frame T draws the stages x flows grid of frame T "
        "instead (OUT/STEM.frameT.attention.png). Inputs are preprocessed as `tdaf eval` does; "
        "--input-size resizes them straight to another size instead. --stats prints, instead of figures, "
        "the statistics training logs after each epoch for a checkpoint, on its evaluation data: per gate "
        "(stage s, flow f) the mean, spread, 5th/95th percentile, how far it moved from the start, and the "
        "focus (mean gate inside the object / outside, where the data give boxes or joints; 1 = no "
        "preference); and what the image-specific part of the attention is worth: the task's metric as "
        "trained, with every gate replaced by its average map over the images, and by a constant.",
        epilog="examples: tdaf attention --checkpoint runs/digits/best.pt digit.png --out attn/ ; "
        "tdaf attention --checkpoint runs/digits/best.pt --stats --json ; "
        "tdaf attention --model tdaf_resnet50 cat.jpg --out attn/ --save-maps npy ; "
        "tdaf attention --checkpoint video.pt clip.mp4 --out attn/ --frame 8",
    )
    p.add_argument("images", nargs="*", metavar="INPUT",
                   help="image files and/or folders (recursive); for a video model also video files (.mp4 ...) "
                   "and frame folders (image_00001.jpg ...)")
    add_model_args(p)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder of the figures (created if missing; may be the image folder: inputs are never "
                   "written over); required unless --stats")
    add_overwrite_arg(p, "replace existing figures / maps of the same names in --out (never an input image)")
    add_input_size_arg(p, "resize inputs straight to H x W (video models: H W or T H W; default: the "
                       "checkpoint's preprocessing, or the model's input size for --model)")
    p.add_argument("--save-maps", choices=MAP_FORMATS, default=None,
                   help="also save the raw maps at their own resolution: npy (one file per map), npz, or pt "
                   "(a dict of tensors)")
    p.add_argument("--person-boxes", metavar="JSON", default=None,
                   help='pose models: one figure per person box, STEM_personI.attention.png; the box file of '
                   '`tdaf eval` / `tdaf predict --person-boxes` (a COCO results json, or {"img.jpg": [[x, y, w, '
                   'h(, score)], ...]}); default: the whole image as one person')
    p.add_argument("--frame", type=int, default=None, help="video models: draw every flow's maps of this clip frame (0..T-1) instead of the strip of "
                   "the last flow's maps over the frames")
    p.add_argument("--cmap", default="jet", help="matplotlib colour map (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the maps over the image (default 0.5)")
    p.add_argument("--normalize", action="store_true",
                   help="stretch each map to its own min..max (default: one 0..1 scale for all cells)")
    p.add_argument("--dpi", type=int, default=100, help="figure resolution (default 100)")
    s = p.add_argument_group("statistics (--stats)")
    s.add_argument("--stats", action="store_true",
                   help="print the checkpoint's attention statistics on its evaluation data instead of drawing figures "
                   "(needs --checkpoint; no INPUT)")
    s.add_argument("--json", action="store_true", help="with --stats: print one JSON object")
    s.add_argument("--count", type=int, metavar="N", default=None,
                   help="with --stats: the gate statistics on the first N evaluation items (default: the subset "
                   "training monitored, 64 items for classification)")
    s.add_argument("--no-ablation", dest="ablation", action="store_false",
                   help="with --stats: skip the ablation (it evaluates the whole split three times)")
    s.add_argument("--data-dir", metavar="PATH", default=None,
                   help="with --stats: the data set's folder (default: the one the checkpoint's run read)")
    s.add_argument("--split", choices=("val", "train"), default="val", help="with --stats: the split (default val)")
    s.add_argument("--subset", type=int, metavar="N", default=None,
                   help="with --stats: a fixed random subset of N evaluation items (the ablation's data too)")
    s.add_argument("--batch-size", type=int, default=None, help="with --stats: the ablation's batch size "
                   "(default: the task's)")
    add_device_arg(p)
    add_progress_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=run)


def _run_stats(args: argparse.Namespace) -> int:
    if not getattr(args, "checkpoint", None):
        raise ValueError("--stats: needs --checkpoint (the statistics are of a trained model on its own data)")
    if args.images:
        raise ValueError(f"--stats: takes no INPUT (got {args.images[0]!r} ...); it reads the checkpoint's "
                         f"evaluation data (--data-dir, --split, --subset)")
    for flag in ("count", "subset", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: got {value}; allowed: >= 1")
    options = EvalOptions(data_dir=args.data_dir, split=args.split, subset=args.subset, batch_size=args.batch_size,
                          device=args.device, progress=False if args.json else args.progress)
    report = checkpoint_attention_stats(args.checkpoint, options, count=args.count, ablation=args.ablation)
    print(json.dumps(json_safe(report), indent=1) if args.json else format_stats(report))
    return 0


def format_stats(report: dict[str, Any]) -> str:
    """``tdaf attention --stats`` as a table: one row per gate, then the ablation."""
    def f(v: float, fmt: str = ".3f") -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:{fmt}}"

    lines = [f"{report['model']} on {report['data']} ({report['split']}, first {report['images']} items; "
             f"each gate g multiplies by g + {report['eta']:g}, so {1 - report['eta']:g} is the identity)",
             f"{'gate':<6} {'mean':>6} {'std':>6} {'p5':>6} {'p95':>6} {'moved':>6} {'focus':>6} {'of g+eta':>8}"]
    for key, g in report["gates"].items():
        cells = [f(g.get(k)) for k in ("mean", "std", "p5", "p95", "moved", "focus")]
        lines.append(f"{key:<6} " + " ".join(f"{c:>6}" for c in cells) + f" {f(g.get('focus_applied')):>8}")
    if not report["regions"]:
        lines.append("focus: - (the data give no object boxes)")
    ab = report.get("ablation")
    if ab:
        m = ab["metric"]
        lines.append(f"{m} as trained {f(ab['trained'], '.4f')}; every gate replaced by its average map "
                     f"{f(ab['average_map'], '.4f')} (drop {f(ab['average_map_drop'], '+.4f')}), by a constant "
                     f"{f(ab['constant'], '.4f')} (drop {f(ab['constant_drop'], '+.4f')})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    if args.stats:
        return _run_stats(args)
    for flag in ("json", "count", "subset", "batch_size", "data_dir"):
        if getattr(args, flag) not in (None, False):
            raise ValueError(f"--{flag.replace('_', '-')}: only with --stats")
    if not args.ablation or args.split != "val":
        raise ValueError("--no-ablation / --split: only with --stats")
    if not args.images:
        raise ValueError("INPUT: give at least one image, video or folder to draw (or --stats for the statistics)")
    if args.out is None:
        raise ValueError("--out: required to draw figures (the folder they go to)")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha: got {args.alpha}; allowed: 0..1")
    if args.dpi < 10:
        raise ValueError(f"--dpi: got {args.dpi}; allowed: >= 10")
    import matplotlib

    if args.cmap not in matplotlib.colormaps:
        raise ValueError(f"--cmap: unknown colour map {args.cmap!r} (see matplotlib.colormaps)")
    device = resolve_device(args.device)
    # Every input is checked before anything is written (the --out folder included).
    loaded = load_model(args)
    task = loaded.task_object()
    r2dns = task.attention_r2dns(loaded.model)
    if r2dns is None or r2dns.anar_name is None:
        raise ValueError(
            f"{loaded.name} has no TDAF attention (no R2DNS module with ANARs): use a tdaf_ model "
            f"(e.g. tdaf_{loaded.name.removeprefix('tdaf_')})"
        )
    if r2dns.flows < 2:
        raise ValueError(f"{loaded.name} runs 1 flow, so it has no attention maps; use --flows 2 or more")
    meta = task.inference_meta(loaded.meta, loaded.model)
    size = task.example_size(meta, args.input_size) if args.input_size else None
    if args.person_boxes is not None and not task.attention_person_boxes:
        takers = [n for n in task_names() if get_task(n).attention_person_boxes]
        raise ValueError(f"--person-boxes: only for {' and '.join(takers)} models; this is a {task.name} model")
    items = task.attention_items(args.images, meta, person_boxes=args.person_boxes)
    video = r2dns.dims == 3
    if video:
        for item in items:
            t = int(size[1]) if size is not None and item.frames is not None and len(item.paths) == 1 else item.frames
            if args.frame is not None and t is not None and not 0 <= args.frame < t:
                raise ValueError(f"--frame: got {args.frame}; allowed: 0..{t - 1} (the clip has {t} frames)")
    elif args.frame is not None:
        raise ValueError(f"--frame: only for video (3D) models; {loaded.name} is a 2D model")
    outputs = Outputs(overwrite=args.overwrite)
    outputs.protect([p for item in items for p in item.paths], "input")
    outputs.protect([getattr(args, "checkpoint", None)], "checkpoint")
    out_dir = outputs.claim_dir(args.out, "--out")
    names = {item.stem: out_dir / _figure_name(item.stem, args.frame if video else None) for item in items}
    for path in names.values():
        outputs.claim(path, "--out")
    with outputs:
        written = _draw(args, loaded, task, r2dns, meta, size, items, names, device, outputs)
    for p in written:
        print(p)
    return 0


def _figure_name(stem: str, frame: int | None) -> str:
    return f"{stem}.attention.png" if frame is None else f"{stem}.frame{frame}.attention.png"


def _draw(args: argparse.Namespace, loaded: LoadedModel, task: Task, r2dns: R2DNS, meta: dict[str, Any],
          size: list[int] | None, items: list[AttentionItem], names: dict[str, Path], device: torch.device,
          outputs: Outputs) -> list[Path]:
    network = task.network(loaded.model).to(device).eval()
    style = dict(cmap=args.cmap, alpha=args.alpha, normalize=args.normalize)
    info = {"tdaf:model": loaded.describe()}
    written: list[Path] = []
    bar = progress_bar(len(items), desc="attention", unit="input", enabled=args.progress)
    try:
        for item in items:
            try:
                x = task.attention_input(item, meta, size)
            except ValueError as e:
                if not item.from_folder:
                    raise
                bar.write(f"skipped {e}")
                continue
            with torch.no_grad(), r2dns.record_attention() as recorded:
                out = network(x.to(device))
            maps = {k: v.float().cpu() for k, v in recorded.items()}
            logits = out.cpu() if isinstance(out, torch.Tensor) and out.dim() == 2 else None  # a classifier's
            heading = item.stem if r2dns.dims == 2 else f"{item.stem} ({x.shape[2]} frames)"
            title = figure_title(heading, loaded.name, logits, meta.get("class_names"), loaded.trained)
            metadata = dict(info, **{"tdaf:input": str(item.paths[0])})
            if r2dns.dims == 3 and args.frame is None:
                written.append(save_clip_attention_figure(
                    x.cpu(), maps, names[item.stem], mean=meta["mean"], std=meta["std"], title=title, dpi=args.dpi,
                    metadata=metadata, outputs=outputs, **style))
            else:
                written.append(save_attention_figure(
                    x.cpu(), maps, names[item.stem], frame=args.frame, title=title, flows=r2dns.flows, dpi=args.dpi,
                    mean=meta["mean"], std=meta["std"], metadata=metadata, outputs=outputs, **style))
            if args.save_maps:
                written += save_maps(maps, names[item.stem].parent, item.stem, args.save_maps, outputs=outputs)
            bar.update(1)
    finally:
        bar.close()
    return written
