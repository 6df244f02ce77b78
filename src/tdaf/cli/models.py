"""``tdaf models``: the registered models, as ``tdaf.list_models()`` gives them."""

from __future__ import annotations

import argparse
import fnmatch
import json

from ..errors import UserError
from ..models import list_models, model_cfg
from ._table import format_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list the registered models (plain and TDAF), by task",
        description="List the registered model names with their task, whether they are TDAF models, their plain "
        "baseline or TDAF variant, and their default input size. Any timm CNN is available too as "
        "tdaf_timm/<timm name> (and timm/<timm name> for the plain one); those are not listed.",
        epilog="examples: tdaf models 'tdaf_resnet*' ; tdaf models --task classification --json",
    )
    p.add_argument("patterns", nargs="*", metavar="PATTERN", help="shell-style name filters (default: all)")
    p.add_argument("--task", default=None, help="only the models of this task (e.g. classification)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = list_models(task=args.task)
    if args.patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in args.patterns)]
    if not names:
        raise UserError(f"PATTERN: no registered model matches {' '.join(args.patterns) or '*'}"
                        f"{f' for task {args.task}' if args.task else ''}")
    rows = []
    for name in names:
        cfg = model_cfg(name)
        rows.append({"model": name, "task": cfg.get("task", "classification"), "tdaf": bool(cfg.get("tdaf")),
                     "pair": cfg.get("baseline") or cfg.get("tdaf_variant") or "",
                     "input_size": list(cfg.get("input_size", ()))})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(format_table(["model", "task", "TDAF", "plain / TDAF counterpart", "input"],
                       [[r["model"], r["task"], "yes" if r["tdaf"] else "-", r["pair"],
                         "x".join(map(str, r["input_size"][1:]))] for r in rows],
                       f"{len(rows)} model(s); tdaf.create_model(NAME) builds one"))
    return 0
