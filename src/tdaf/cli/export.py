"""``tdaf export``: ONNX or TorchScript file of a model, with a parity check against PyTorch;
or (``--format timm``) a folder of ``config.json`` + ``model.safetensors`` (:mod:`tdaf.hub`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..export import DEFAULT_OPSET, FORMATS, ONNX_EXPORTERS, ExportReport, export_model
from ..inference import fold_batchnorm
from ..io.outputs import Outputs
from ._common import add_fold_bn_arg, add_input_size_arg, add_threads_arg, apply_threads
from ._load import LoadedModel, add_model_args, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX or TorchScript and check it against PyTorch",
        description="Write an ONNX (run by onnxruntime) or TorchScript file of a trained checkpoint or an "
        "untrained registered model. The input has a dynamic batch size and, where the model allows it, "
        "dynamic height and width (TDAF models do, odd sizes included). Afterwards the export is run on random "
        "inputs at the export size and at a second, odd size with another batch size, and the max absolute "
        "difference to PyTorch is printed; the command fails (exit 1) if it exceeds --tolerance (relative to "
        "the output's scale when that exceeds 1). The file records the model name, class names, mean, std "
        "and input size (ONNX metadata_props; TorchScript extra file tdaf.json). Every task's model: "
        "classifiers and video models whole; pose models whole (heat-maps out); detectors as their network "
        "(backbone + FPN + head: cls_logits, bbox_regression, bbox_ctrness), without the resizing and the "
        "box decoding + NMS (docs/export.md says how to apply them). ONNX and TorchScript files hold the "
        "inference form (--fold-bn, the default: every BatchNorm folded into the convolution before it), "
        "checked against the model as trained. Export runs on the CPU (the "
        "files are device-independent), so the command has no --device.",
        epilog="example: tdaf export --checkpoint runs/digits/best.pt --format onnx --out digits.onnx",
    )
    add_model_args(p)
    p.add_argument("--format", required=True, choices=(*FORMATS, "timm"),
                   help="onnx, torchscript, or timm (a folder of config.json + model.safetensors, as "
                   "timm.models.save_for_hf writes it: tdaf.create_model('local-dir:OUT') and, for classifiers, "
                   "timm.create_model('local-dir:OUT', pretrained=True) rebuild the model)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output file (e.g. model.onnx, model.pt; a folder for --format timm); an existing file is "
                   "kept unless --overwrite")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace an existing --out file (never the input checkpoint)")
    add_input_size_arg(p, "example input height and width (video models: T H W, or H W with the model's clip "
                       "length; default: the checkpoint's / model's input size; detection: min_size x max_size)")
    p.add_argument("--check-size", type=int, nargs="+", metavar=("H", "W"), default=None,
                   help="second size for the parity check, H W (video: T H W; default: an odd size ~1.4x H, "
                   "1.15x W, e.g. 45x37 for 32x32, and 1.5x T)")
    p.add_argument("--static-hw", action="store_true", help="fix height and width to --input-size (batch stays dynamic)")
    p.add_argument("--onnx-exporter", choices=ONNX_EXPORTERS, default="torchscript",
                   help="torch.onnx exporter: torchscript (default; fast) or dynamo (torch.export + onnxscript, "
                   "slower)")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset (default {DEFAULT_OPSET['torchscript']}; {DEFAULT_OPSET['dynamo']} with "
                   f"--onnx-exporter dynamo, which needs >= 18)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max allowed abs difference (default 1e-4)")
    add_fold_bn_arg(p, "; for onnx and torchscript: the file holds the folded model and the parity check compares "
                    "it with the unfolded one; never for --format timm, whose weights stay those of the unfolded "
                    "architecture, so that timm.create_model(..., pretrained=True) loads them")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_threads_arg(p)
    p.set_defaults(func=run)


def _metadata(loaded: LoadedModel, meta: dict[str, Any], network: Any, folded: bool) -> dict[str, Any]:
    keys = ("class_names", "categories", "mean", "std", "input_size", "resize", "min_size", "max_size", "data",
            "keypoint_names", "heatmap_stride")
    out: dict[str, Any] = {"model": loaded.name, "task": loaded.task, "model_kwargs": loaded.kwargs,
                           "trained": loaded.trained, "source": loaded.source, "batchnorm_folded": folded}
    out.update({k: meta[k] for k in keys if k in meta})
    if getattr(network, "output_names", None):  # a network of several named outputs (detection's head)
        out["outputs"] = list(network.output_names)
    return out


def _describe(report: ExportReport, loaded: LoadedModel, tolerance: float, size_bytes: int,
              outputs: Any = None, folded: bool = False) -> str:
    how = f"ONNX opset {report.opset}, {report.exporter} exporter" if report.format == "onnx" else "TorchScript (traced)"
    c, *dims = report.input_size
    names = ("T", "H", "W")[-len(dims):]  # (C, H, W) for images, (C, T, H, W) for video
    what = "/".join({"T": "length", "H": "height", "W": "width"}[n] for n in names)
    lines = [
        f"exported {loaded.describe()} -> {report.path} ({how}, {size_bytes / 1e6:.1f} MB)",
        f"input (B, {c}, {', '.join(names)}): batch dynamic, {what} "
        + ("dynamic" if report.dynamic_hw else f"fixed at {'x'.join(map(str, dims))}"),
        f"parity vs PyTorch{' (the model before folding its BatchNorms)' if folded else ''} "
        f"({'onnxruntime' if report.format == 'onnx' else 'torch.jit.load'}), random inputs:",
    ]
    if outputs:  # a part of the model (detection's network): say what comes out and what is left to do
        lines.insert(2, f"outputs: {', '.join(outputs)} (the {loaded.task} network; docs/export.md#every-task says "
                        f"how to post-process them)")
    for p in report.parity:
        where = f"  batch {p.batch} @ {'x'.join(map(str, p.size))}: "
        lines.append(where + (f"FAILED to run ({p.error})" if p.error else
                              f"max abs diff {p.max_abs_diff:.2e} (outputs up to {p.max_abs_ref:.3g})"))
    lines += [f"note: {n}" for n in report.notes]
    lines.append(("ok" if report.ok(tolerance) else "FAILED") + f": tolerance {tolerance:g}")
    return "\n".join(lines)


def _check_out(out: Path, args: argparse.Namespace) -> Outputs:
    """Refuse, before any work, an --out that is a folder, cannot be written, is the input
    checkpoint (even with --overwrite), or exists (without --overwrite)."""
    if out.is_dir():
        raise ValueError(f"--out: {out} is a folder; give a file name (e.g. {out / ('model.' + args.format)})")
    outputs = Outputs(overwrite=args.overwrite)
    outputs.protect([getattr(args, "checkpoint", None)], "checkpoint")
    outputs.claim(out, "--out")
    return outputs


def _run_timm(args: argparse.Namespace, out: Path) -> int:
    """``--format timm``: the folder, then a reload through ``local-dir:`` that must give back
    every tensor unchanged."""
    from ..hub import CONFIG_NAME, WEIGHTS_NAME, load_from_folder, save_for_hf
    from ..models.timm_registry import registered_in_timm

    ckpt = getattr(args, "checkpoint", None)
    if ckpt and Path(ckpt).expanduser().resolve() == out.resolve():
        raise ValueError(f"--out: {out} is the input checkpoint; give a folder")
    loaded = load_model(args)
    save_for_hf(loaded.model, out, model_name=loaded.name, model_args=loaded.kwargs, meta=loaded.meta,
                task=loaded.task, overwrite=args.overwrite)
    again = load_from_folder(out, f"local-dir:{out}").state_dict()
    own = loaded.model.state_dict()
    same = own.keys() == again.keys() and all(torch.equal(own[k], again[k]) for k in own)
    size = (out / WEIGHTS_NAME).stat().st_size
    in_timm = loaded.name in registered_in_timm()
    loads = f"tdaf.create_model('local-dir:{out}')" + (
        f" and timm.create_model('local-dir:{out}', pretrained=True)" if in_timm else "")
    if args.json:
        print(json.dumps({"format": "timm", "out": str(out), "files": [CONFIG_NAME, WEIGHTS_NAME],
                          "model": loaded.name, "tensors": len(own), "bytes": size, "identical": same,
                          "timm": in_timm}))
    else:
        print(f"{loaded.name} ({loaded.source}) -> {out}/{CONFIG_NAME} + {WEIGHTS_NAME} ({len(own)} tensors, "
              f"{size / 2**20:.1f} MiB); reloaded: {'every tensor identical' if same else 'TENSORS DIFFER'}; "
              f"{loads} rebuild it")
    if not same:
        print(f"tdaf export: error: the folder {out} does not give back the model's weights", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    if args.format == "timm":
        return _run_timm(args, Path(args.out).expanduser())
    if args.tolerance <= 0:
        raise ValueError(f"--tolerance: got {args.tolerance}; allowed: > 0")
    out = Path(args.out).expanduser()
    outputs = _check_out(out, args)
    loaded = load_model(args)
    names = loaded.meta.get("class_names")
    classes = getattr(loaded.model, "num_classes", None)
    if names is not None and isinstance(classes, int) and classes > 0 and len(names) != classes:
        raise ValueError(f"--checkpoint: {args.checkpoint} names {len(names)} classes but its model has "
                         f"{classes} outputs; the exported file would label its outputs wrongly")
    task = loaded.task_object()
    meta = task.inference_meta(loaded.meta, loaded.model)
    if len(meta.get("input_size") or []) not in (3, 4):
        raise ValueError(f"{loaded.source}: no input_size [C, H, W] recorded; give --input-size H W")
    size = task.example_size(meta, args.input_size)
    reference = task.network(loaded.model)
    network = task.network(fold_batchnorm(loaded.model)) if args.fold_bn else reference
    with outputs:
        # Exported to a temporary beside --out and checked there; --out gets it only when the
        # export, the parity check and the report all succeeded.
        tmp = outputs.temporary(out)
        report = export_model(
            network, tmp, args.format, size, check_size=args.check_size, dynamic_hw=not args.static_hw,
            exporter=args.onnx_exporter, opset=args.opset, tolerance=args.tolerance,
            metadata=_metadata(loaded, meta, network, args.fold_bn), reference=reference,
        )
        size_bytes = Path(report.path).stat().st_size
        report.path = out
        ok = report.ok(args.tolerance)
        if args.json:
            text = json.dumps(dict(report.to_dict(), ok=ok, tolerance=args.tolerance, written=ok,
                                   fold_bn=args.fold_bn))
        else:
            text = _describe(report, loaded, args.tolerance, size_bytes, getattr(network, "output_names", None),
                             args.fold_bn)
        if not ok:
            outputs.discard()  # a failed check leaves nothing behind (a rerun is not refused by it)
    print(text)
    if not ok:
        print(f"tdaf export: error: parity check failed (tolerance {args.tolerance:g}); see above; {out} was not "
              f"written (a larger --tolerance accepts the export)", file=sys.stderr)
        return 1
    return 0
