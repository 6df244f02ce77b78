"""``tdaf profile``: parameters, GMACs and CPU latency of a model and its plain baseline."""

from __future__ import annotations

import argparse
import fnmatch
import json
from typing import Any

import torch
from torch import nn

from ..engine.checkpoint import model_from_checkpoint
from ..io.progress import track
from ..engine.task import get_task
from ..models import create_model, list_models, model_cfg
from ..models._builder import split_tdaf_kwargs
from ..profile import profile_model
from ._common import add_device_arg, add_input_size_arg, add_threads_arg, apply_threads, resolve_device
from ._table import format_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="parameters, GMACs and latency of a model (and its plain baseline)",
        description="Count parameters and GMACs (torch.utils.flop_counter; MACs = FLOPs/2, as the paper "
        "counts) and time the forward pass on this machine, for a model of any task at its input size "
        "(classifiers, pose and video models whole; detectors as backbone + FPN + head, without the resizing "
        "and the box decoding + NMS). For a tdaf_ model the plain baseline is profiled too and the overhead "
        "shown, like the paper's Tab. 3a-6.",
        epilog="examples: tdaf profile tdaf_resnet50 --flows 3 --anar anar3 --input-size 224 224; "
               "tdaf profile --all --markdown > zoo.md (every registered model); "
               "tdaf profile --all 'tdaf_vgg*'; tdaf profile tdaf_timm/efficientnet_b0 timm/efficientnet_b0",
    )
    p.add_argument("names", nargs="*", default=[], metavar="MODEL",
                   help="registered model name (see tdaf.list_models(); tdaf_timm/<timm name> works too); "
                        "several names give one table; with --all, shell-style patterns that filter the zoo")
    p.add_argument("--flows", type=int, default=None, help="number of flows N (tdaf_ models; default 3)")
    p.add_argument("--anar", default=None, help="anar2 | anar3 | anar5 | anar7 (tdaf_ models; default anar3)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")
    p.add_argument("--model", default=None, metavar="NAME", help="the model to profile (or give names as MODEL ...)")
    p.add_argument("--checkpoint", default=None, metavar="CKPT",
                   help="profile the model of a checkpoint written by `tdaf train` (any task) at the input size it "
                   "was trained for, and its plain baseline")
    add_input_size_arg(p, "input height and width (default: the model's, e.g. 224 224; detectors: min_size x "
                       "max_size, 800 1333; video models: H W keeps the clip length, e.g. 16 frames, or T H W)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for the latency measurement (default 1)")
    p.add_argument("--iters", type=int, default=5, help="timed forward passes (median is reported; default 5)")
    p.add_argument("--no-latency", action="store_true", help="skip the timing (params and GMACs only)")
    p.add_argument("--no-baseline", action="store_true", help="do not profile the plain baseline")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table "
                   "(one JSON object per line for several models)")
    p.add_argument("--all", action="store_true",
                   help="profile every registered model (the model zoo table): parameters and GMACs at each model's "
                        "default input size, and for tdaf_ and msconcat_ models the overhead against the plain "
                        "backbone; no latency (models are built on the meta device, without memory)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (as in docs/models.md)")
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=run)


def _parts(name: str, model: nn.Module, args: argparse.Namespace,
           meta: dict[str, Any] | None = None) -> tuple[nn.Module, list[int], dict[str, Any]]:
    """What is profiled of the model ``name`` (its task's network: the detector without its
    resizing and NMS), the input size ``[C, ...]`` (the model's, --input-size replacing H and
    W, or T H W for video) and the flows / ANAR of its R2DNS, found through its task."""
    cfg = model_cfg(name)
    task = get_task(cfg.get("task", "classification"), f"{name}: task")()
    meta = task.inference_meta(meta if meta is not None else {"input_size": list(cfg["input_size"])}, model)
    size = task.example_size(meta, args.input_size)
    r2dns = task.attention_r2dns(model)
    info: dict[str, Any] = {}
    if r2dns is not None and (cfg.get("tdaf") or cfg.get("tdaf_args")):  # TDAF models, the multi-scale ablation
        info["flows"] = r2dns.flows
        if cfg.get("tdaf"):
            info["anar"] = r2dns.anar_name
    return task.network(model), size, info


def _profile(name: str, args: argparse.Namespace, tdaf_args: dict[str, Any], model: nn.Module | None = None,
             meta: dict[str, Any] | None = None) -> dict[str, Any]:
    if model is None:
        model = create_model(name, num_classes=args.num_classes, **tdaf_args)
    network, size, info = _parts(name, model, args, meta)
    result = profile_model(
        network, tuple(size), batch_size=args.batch_size, latency=not args.no_latency, iters=args.iters,
        device=resolve_device(args.device),
    )
    result["model"] = name
    result.update(info)
    return result


def _checkpoint_rows(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The checkpoint's model at the input size it was trained for (its task's inference
    size), and its plain baseline with the same non-TDAF arguments (classes, sizes)."""
    if args.model or args.all or any(getattr(args, k) is not None for k in ("flows", "anar", "num_classes")):
        raise ValueError("--checkpoint: give it alone (a checkpoint fixes the model, its flows, ANAR and classes)")
    model, meta = model_from_checkpoint(args.checkpoint, what="--checkpoint")
    name = str(meta["model_name"])
    result = _profile(name, args, {}, model, meta)
    cfg = model_cfg(name)
    if not cfg.get("baseline") or args.no_baseline:
        return result, None
    _, rest = split_tdaf_kwargs(dict(meta.get("model_kwargs", {})))
    return result, _profile(cfg["baseline"], args, {}, create_model(cfg["baseline"], **rest), meta)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    args.model = ([args.model] if args.model else []) + list(args.names)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: got {args.batch_size}; allowed: >= 1")
    if args.checkpoint:
        result, baseline = _checkpoint_rows(args)
        return _report(args, result, baseline)
    if args.all or len(args.model) > 1:
        return _run_zoo(args)
    if not args.model:
        raise ValueError("model: give a model name (see tdaf.list_models()), several names, or --all")
    args.model = args.model[0]
    cfg = model_cfg(args.model)
    tdaf_args = {k: v for k, v in (("flows", args.flows), ("anar", args.anar)) if v is not None}
    result = _profile(args.model, args, tdaf_args)
    baseline = None
    if cfg.get("tdaf") and cfg.get("baseline") and not args.no_baseline:
        baseline = _profile(cfg["baseline"], args, {})
    return _report(args, result, baseline)


def _report(args: argparse.Namespace, result: dict[str, Any], baseline: dict[str, Any] | None) -> int:
    if baseline is not None:
        result["baseline"] = baseline
        result["overhead"] = {
            "params": result["params"] / baseline["params"] - 1,
            "gmacs": result["gmacs"] / baseline["gmacs"] - 1,
        }
        if "latency_ms" in result:
            result["overhead"]["latency"] = result["latency_ms"] / baseline["latency_ms"] - 1
    if args.json:
        print(json.dumps(result, indent=None))
        return 0
    rows = ([baseline] if baseline else []) + [result]
    print(_table(rows, baseline, markdown=args.markdown))
    return 0


def _zoo_names(args: argparse.Namespace) -> list[str]:
    if not args.all:
        for name in args.model:
            model_cfg(name)  # unknown names fail before any work
        return list(dict.fromkeys(args.model))
    if not args.model:
        return list_models(task="classification")
    names = [n for n in list_models() if any(fnmatch.fnmatch(n, pat) for pat in args.model)]
    if not names:
        raise ValueError(f"model: no registered model matches {' '.join(args.model)} (see tdaf.list_models())")
    return names


def _order(names: list[str]) -> list[str]:
    """Each plain model, then the models built on it (tdaf_, msconcat_)."""
    ordered: list[str] = []
    children: dict[str, list[str]] = {}
    for n in names:
        base = model_cfg(n).get("baseline")
        if base in names:
            children.setdefault(base, []).append(n)
    for n in names:
        if model_cfg(n).get("baseline") not in names:
            ordered.append(n)
            ordered.extend(children.get(n, []))
    return ordered


def _zoo_row(name: str, args: argparse.Namespace, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if name in cache:
        return cache[name]
    cfg = model_cfg(name)
    kwargs: dict[str, Any] = {}
    if cfg.get("tdaf"):
        kwargs = {k: v for k, v in (("flows", args.flows), ("anar", args.anar)) if v is not None}
    # Parameters and MACs need shapes only: the meta device skips weight init and memory.
    with torch.device("meta"):
        model = create_model(name, num_classes=args.num_classes, **kwargs)
        network, size, info = _parts(name, model, args)
        row = profile_model(network, tuple(size), latency=False)
    row["model"] = name
    row.update(info)
    if cfg.get("baseline"):
        base = _zoo_row(cfg["baseline"], args, cache)
        row["baseline_model"] = base["model"]
        row["overhead"] = {"params": row["params"] / base["params"] - 1, "gmacs": row["gmacs"] / base["gmacs"] - 1,
                           "params_added": row["params"] - base["params"]}
    cache[name] = row
    return row


def _run_zoo(args: argparse.Namespace) -> int:
    names = _order(_zoo_names(args))
    cache: dict[str, dict[str, Any]] = {}
    rows = []
    for name in track(names, desc="profile", unit="model", enabled=False if args.json or len(names) < 3 else None):
        rows.append(_zoo_row(name, args, cache))
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(_zoo_table(rows, args.markdown))
    return 0


def _zoo_table(rows: list[dict[str, Any]], markdown: bool) -> str:
    head = ["Model", "Input", "ANAR", "#F", "Params (M)", "GMACs", "Params vs. plain", "GMACs vs. plain"]
    lines = []
    for r in rows:
        over = r.get("overhead")
        lines.append([
            f"`{r['model']}`" if markdown else r["model"],
            "x".join(map(str, r["input_size"][1:])),
            str(r.get("anar", "-")),
            str(r.get("flows", "-")),
            f"{r['params'] / 1e6:.2f}",
            f"{r['gmacs']:.3f}" if r["gmacs"] < 1 else f"{r['gmacs']:.2f}",
            f"{over['params_added'] / 1e6:+.3f}M ({over['params']:+.1%})" if over else "-",
            f"{over['gmacs']:+.1%}" if over else "-",
        ])
    note = ("GMACs per image at the input size shown (FLOPs/2, torch.utils.flop_counter); "
            "overheads against the plain backbone of the same row group; tdaf_ models with their default "
            "flows and ANAR unless --flows/--anar were given")
    return format_table(head, lines, note, markdown)


def _table(rows: list[dict[str, Any]], baseline: dict[str, Any] | None, markdown: bool = False) -> str:
    head = ["Model", "ANAR", "#F", "Params", "GMACs", "Latency (ms)"]
    lines = []
    for r in rows:
        lat = f"{r['latency_ms']:.1f}" if "latency_ms" in r else "-"
        params, gmacs = f"{r['params'] / 1e6:.3f}M", f"{r['gmacs']:.3f}"
        if baseline is not None and r is not baseline:
            params += f" ({r['params'] / baseline['params'] - 1:+.1%})"
            gmacs += f" ({r['gmacs'] / baseline['gmacs'] - 1:+.1%})"
            if "latency_ms" in r:
                lat += f" ({r['latency_ms'] / baseline['latency_ms'] - 1:+.1%})"
        lines.append([r["model"], str(r.get("anar", "-")), str(r.get("flows", "-")), params, gmacs, lat])
    r0 = rows[-1]
    unit = "clip" if len(r0["input_size"]) == 4 else "image"
    note = f"input {'x'.join(map(str, r0['input_size'][1:]))}, GMACs per {unit} (FLOPs/2)"
    if "latency_ms" in r0:
        threads = r0.get("threads", torch.get_num_threads())
        where = "GPU" if r0.get("device") == "cuda" else f"CPU, {threads} thread{'s' if threads != 1 else ''}"
        note += f", latency: median forward of batch {r0['batch_size']} ({where})"
    return format_table(head, lines, note, markdown)
