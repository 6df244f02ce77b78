"""``tdaf attention``: the paper's Fig. 3b/c for your own images (stages x flows grid)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from ..classification.data import eval_transform
from ..io.images import collect_images, open_image, unique_stems
from ..io.outputs import Outputs
from ..viz import (
    MAP_FORMATS, compute_attention, figure_title, save_attention_figure, save_attention_figures, save_maps,
)
from ._common import (
    add_device_arg, add_input_size_arg, add_overwrite_arg, add_progress_arg, add_threads_arg, apply_threads,
    input_size_hw, resolve_device,
)
from ._load import LoadedModel, add_model_args, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="draw a TDAF model's attention maps over images (paper Fig. 3b/c)",
        description="For each image, write OUT/STEM.attention.png: one row per stage with an ANAR "
        "(1..L-1), one column per flow (1..N); each ANAR map g(x) is upsampled (bilinear) to the input "
        "size and drawn over the input. Flow 1 has no attention (its cells show the input alone) and a "
        "stage that the previous flow did not run is not gated (grey cell). Works for any 2D TDAF model "
        "(classifier: the title gives the predicted label). For a video (3D) model, the images are the "
        "frames of one clip, in order, and --frame picks the frame to draw. Images are preprocessed as "
        "`tdaf eval` does; --input-size resizes them straight to another size instead.",
        epilog="examples: tdaf attention --checkpoint runs/digits/best.pt digit.png --out attn/ ; "
        "tdaf attention --model tdaf_resnet50 cat.jpg --out attn/ --save-maps npy",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders (recursive)")
    add_model_args(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created if missing; may be the image folder: inputs are never written over)")
    add_overwrite_arg(p, "replace existing figures / maps of the same names in --out (never an input image)")
    add_input_size_arg(p, "resize images straight to H x W (default: the checkpoint's preprocessing, or the "
                       "model's input size for --model)")
    p.add_argument("--save-maps", choices=MAP_FORMATS, default=None,
                   help="also save the raw maps at their own resolution: npy (one file per map), npz, or pt "
                   "(a dict of tensors)")
    p.add_argument("--frame", type=int, default=None, help="video models: the clip frame to draw (default: middle)")
    p.add_argument("--cmap", default="jet", help="matplotlib colour map (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the maps over the image (default 0.5)")
    p.add_argument("--normalize", action="store_true",
                   help="stretch each map to its own min..max (default: one 0..1 scale for all cells)")
    p.add_argument("--dpi", type=int, default=100, help="figure resolution (default 100)")
    add_device_arg(p)
    add_progress_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=run)


def _meta(loaded: LoadedModel, input_size: list[int] | None) -> dict[str, Any]:
    meta = dict(loaded.meta)
    hw = input_size_hw(input_size)
    if hw is not None:
        channels = int(meta.get("input_size", [3])[0])
        meta.update(input_size=[channels, *hw], resize=None)
    return meta


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha: got {args.alpha}; allowed: 0..1")
    if args.dpi < 10:
        raise ValueError(f"--dpi: got {args.dpi}; allowed: >= 10")
    import matplotlib

    if args.cmap not in matplotlib.colormaps:
        raise ValueError(f"--cmap: unknown colour map {args.cmap!r} (see matplotlib.colormaps)")
    device = resolve_device(args.device)
    # Every input is checked before anything is written (the --out folder included).
    images = collect_images(args.images)
    loaded = load_model(args)
    r2dns = loaded.r2dns
    if r2dns is None or r2dns.anar_name is None:
        raise ValueError(
            f"{loaded.name} has no TDAF attention (no R2DNS module): use a tdaf_ model "
            f"(e.g. tdaf_{loaded.name.removeprefix('tdaf_')})"
        )
    if r2dns.flows < 2:
        raise ValueError(f"{loaded.name} runs 1 flow, so it has no attention maps; use --flows 2 or more")
    meta = _meta(loaded, args.input_size)
    if r2dns.dims == 3:
        frames_given = len(images.files)
        if args.frame is not None and not 0 <= args.frame < frames_given:
            raise ValueError(f"--frame: got {args.frame}; allowed: 0..{frames_given - 1} (the clip has "
                             f"{frames_given} frames)")
    elif args.frame is not None:
        raise ValueError(f"--frame: only for video (3D) models; {loaded.name} is a 2D model")
    outputs = Outputs(overwrite=args.overwrite)
    outputs.protect(images.files, "image")
    outputs.protect([getattr(args, "checkpoint", None)], "checkpoint")
    out_dir = outputs.claim_dir(args.out, "--out")
    stems = unique_stems(images.files)
    if r2dns.dims == 3:
        frame = args.frame if args.frame is not None else frames_given // 2
        outputs.claim(out_dir / f"{stems[0]}_clip.frame{frame}.attention.png", "--out")
    else:
        for stem in stems:
            outputs.claim(out_dir / f"{stem}.attention.png", "--out")
    with outputs:
        written = _draw(args, loaded, meta, images, out_dir, device, outputs)
    for p in written:
        print(p)
    return 0


def _draw(args: argparse.Namespace, loaded: LoadedModel, meta: dict[str, Any], images: Any, out_dir: Path,
          device: torch.device, outputs: Outputs) -> list[Path]:
    r2dns = loaded.r2dns
    assert r2dns is not None
    model = loaded.model.to(device)
    common = dict(cmap=args.cmap, alpha=args.alpha, normalize=args.normalize, flows=r2dns.flows, dpi=args.dpi)
    info = {"tdaf:model": loaded.describe()}
    written: list[Path] = []
    if r2dns.dims == 3:
        # A video model: the images are the frames of one clip. Its meta's input size is
        # [C, T, H, W]; each frame is preprocessed to [C, H, W].
        size = list(meta.get("input_size", [3, 224, 224]))
        transform = eval_transform({**meta, "input_size": [size[0], *size[-2:]]})
        frames = [open_image(f) for f in images.files]
        clip = torch.stack([transform(f) for f in frames], dim=1)[None].to(device)  # (1, C, T, H, W)
        out, maps = compute_attention(model, clip)
        frame = args.frame if args.frame is not None else clip.shape[2] // 2
        stem = f"{unique_stems(images.files[:1])[0]}_clip"
        title = figure_title(f"clip of {len(frames)} frames, frame {frame}", loaded.name,
                             out.cpu() if isinstance(out, torch.Tensor) else None, meta.get("class_names"),
                             loaded.trained)
        written.append(save_attention_figure(
            clip.cpu(), maps, out_dir / f"{stem}.frame{frame}.attention.png", frame=frame, title=title,
            metadata=info, mean=meta["mean"], std=meta["std"], outputs=outputs, **common))
        if args.save_maps:
            written += save_maps(maps, out_dir, stem, args.save_maps, outputs=outputs)
    else:
        bar = tqdm(total=len(images), unit="img", desc="attention", disable=not args.progress or None, file=sys.stderr)

        def readable() -> Iterator[tuple[str, Image.Image]]:
            for path, from_folder, stem in zip(images.files, images.from_folder, unique_stems(images.files)):
                try:
                    yield stem, open_image(path)
                except ValueError as e:
                    if not from_folder:
                        raise
                    tqdm.write(f"skipped {e}", file=sys.stderr)
                    bar.update(1)

        written += save_attention_figures(
            model, meta, readable(), out_dir, trained=loaded.trained, device=device, save_maps_as=args.save_maps,
            metadata=info, progress=lambda: bar.update(1), outputs=outputs, **common)
        bar.close()
    return written
