"""TDAF overhead against its plain baseline, measured side by side in one run.

Eval forward and one SGD training step, the two models interleaved round by round so
that machine noise hits both alike; then memory: the bytes autograd saves for the
backward pass (activations: what a training step's memory grows with; on CPU there is
no allocator peak to read, and process RSS is dominated by the allocator's caching).
Prints the ratios and the targets of the core issue.

    python benchmarks/overhead.py                     # ResNet-50 vs TDAF (ANAR-3, 3 flows), 224, batch 8
    python benchmarks/overhead.py --model resnet18 --rounds 3 --batch-size 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

import tdaf
from tdaf.profile import count_gmacs, count_params

TARGETS = {"forward": 1.30, "train_step": 1.35}


def _build(name: str, args: argparse.Namespace) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": 1000}
    if name.startswith("tdaf_"):
        kwargs.update(flows=args.flows, anar=args.anar)
    model = tdaf.create_model(name, **kwargs)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 1000, (args.batch_size,), generator=g)


def _forward(model: nn.Module, x: torch.Tensor) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        model(x)
    return time.perf_counter() - start


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    model.train()
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - start


def _saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="plain baseline name (default resnet50)")
    p.add_argument("--flows", type=int, default=3)
    p.add_argument("--anar", default="anar3")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (median reported)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = {"baseline": args.model, "tdaf": f"tdaf_{args.model}"}
    models = {k: _build(n, args) for k, n in names.items()}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x, y = _inputs(args)
    print(f"{names['tdaf']} (ANAR {args.anar}, {args.flows} flows) vs {names['baseline']}: input "
          f"{args.size}x{args.size}, batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}, "
          f"device cpu{', channels-last' if args.channels_last else ''}", flush=True)

    times: dict[str, dict[str, list[float]]] = {k: {"forward": [], "train_step": []} for k in models}
    for key in models:  # warm-up: first calls allocate and pick kernels
        _forward(models[key], x)
        _train_step(models[key], opts[key], x, y)
    for r in range(args.rounds):
        for key in models:
            times[key]["forward"].append(_forward(models[key], x))
        for key in models:
            times[key]["train_step"].append(_train_step(models[key], opts[key], x, y))
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    rows = []
    ok = True
    for what in ("forward", "train_step"):
        base = statistics.median(times["baseline"][what])
        ours = statistics.median(times["tdaf"][what])
        ratio = ours / base
        passed = ratio <= TARGETS[what]
        ok &= passed
        rows.append((what, f"{base * 1e3:.0f} ms", f"{ours * 1e3:.0f} ms", f"{ratio:.3f}",
                     f"<= {TARGETS[what]:.2f} {'ok' if passed else 'MISSED'}"))
    x1 = x[:1]
    macs = {k: count_gmacs(m, x1) for k, m in models.items()}
    rows.append(("GMACs / image", f"{macs['baseline']:.3f}", f"{macs['tdaf']:.3f}",
                 f"{macs['tdaf'] / macs['baseline']:.3f}", "(floor)"))
    params = {k: count_params(m) for k, m in models.items()}
    rows.append(("params", f"{params['baseline'] / 1e6:.2f}M", f"{params['tdaf'] / 1e6:.2f}M",
                 f"{params['tdaf'] / params['baseline']:.3f}", ""))
    if not args.no_memory:
        act = {k: _saved_activation_bytes(m, x, y) for k, m in models.items()}
        rows.append(("saved activations", f"{act['baseline'] / 2**20:.0f} MiB", f"{act['tdaf'] / 2**20:.0f} MiB",
                     f"{act['tdaf'] / act['baseline']:.3f}", ""))
    head = ("measure", "baseline", "TDAF", "ratio", "target")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print("all targets met" if ok else "some targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
