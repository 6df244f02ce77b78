"""``tdaf profile``: parameters, GMACs and CPU latency of a model and its plain baseline."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from ..models import create_model, model_cfg
from ..profile import profile_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="parameters, GMACs and latency of a model (and its plain baseline)",
        description="Count parameters and GMACs (torch.utils.flop_counter; MACs = FLOPs/2, as the paper "
        "counts) and time the forward pass on this machine. For a tdaf_ model the plain baseline is "
        "profiled too and the overhead shown, like the paper's Tab. 3a.",
        epilog="example: tdaf profile tdaf_resnet50 --flows 3 --anar anar3 --input-size 224 224",
    )
    p.add_argument("model", help="registered model name (see tdaf.list_models())")
    p.add_argument("--flows", type=int, default=None, help="number of flows N (tdaf_ models; default 3)")
    p.add_argument("--anar", default=None, help="anar2 | anar3 | anar5 | anar7 (tdaf_ models; default anar3)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input height and width (default: the model's, e.g. 224 224)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for the latency measurement (default 1)")
    p.add_argument("--iters", type=int, default=5, help="timed forward passes (median is reported; default 5)")
    p.add_argument("--no-latency", action="store_true", help="skip the timing (params and GMACs only)")
    p.add_argument("--no-baseline", action="store_true", help="do not profile the plain baseline")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def _profile(name: str, args: argparse.Namespace, tdaf_args: dict[str, Any]) -> dict[str, Any]:
    cfg = model_cfg(name)
    channels = cfg["input_size"][0]
    size = tuple(args.input_size) if args.input_size else tuple(cfg["input_size"][1:])
    model = create_model(name, num_classes=args.num_classes, **tdaf_args)
    result = profile_model(
        model, (channels, *size), batch_size=args.batch_size, latency=not args.no_latency, iters=args.iters
    )
    result["model"] = name
    if cfg.get("tdaf"):
        result.update(flows=model.backbone.flows, anar=model.backbone.anar_name)
    return result


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: got {args.batch_size}; allowed: >= 1")
    cfg = model_cfg(args.model)
    tdaf_args = {k: v for k, v in (("flows", args.flows), ("anar", args.anar)) if v is not None}
    result = _profile(args.model, args, tdaf_args)
    baseline = None
    if cfg.get("tdaf") and cfg.get("baseline") and not args.no_baseline:
        baseline = _profile(cfg["baseline"], args, {})
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
    print(_table(rows, baseline))
    return 0


def _table(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
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
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    r0 = rows[-1]
    note = (f"input {r0['input_size'][1]}x{r0['input_size'][2]}, GMACs per image (FLOPs/2), latency: "
            f"median CPU forward of batch {r0['batch_size']} on {torch.get_num_threads()} threads")
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines), note])
