"""Parameters and GMACs of SimpleBaseline vs TDAF-SimpleBaseline (paper Tab. 5 models) at
256x192, and the forward-time ratio TDAF / plain on this machine's CPU.

Parameters and MACs are counted on the meta device (no memory, no weights); the timing
runs real forwards, the models timed in turn within each round (so a change in the
machine's load hits both), and reports the median and the spread of the per-round ratios.

    PYTHONPATH=src python benchmarks/pose_profile.py [--rounds 7] [--threads 2] [--no-time]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import tdaf
from tdaf.profile import count_gmacs, count_params, interleaved_latency

MODELS = [
    ("simplebaseline_resnet50", {}), ("tdaf_simplebaseline_resnet50", dict(anar="anar3")),
    ("tdaf_simplebaseline_resnet50", dict(anar="anar5")), ("tdaf_simplebaseline_resnet50", dict(anar="anar7")),
    ("simplebaseline_resnet101", {}), ("tdaf_simplebaseline_resnet101", dict(anar="anar3")),
    ("tdaf_simplebaseline_resnet101", dict(anar="anar5")),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--no-time", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| model | attention | params (M) | GMACs @256x192 |")
    print("|---|---|---:|---:|")
    for name, kw in MODELS:
        with torch.device("meta"):
            m = tdaf.create_model(name, **kw)
            g = count_gmacs(m, torch.empty(1, 3, 256, 192))
        print(f"| {name} | {kw.get('anar', 'none')}{', 3 flows' if kw else ''} | {count_params(m) / 1e6:.3f} | {g:.2f} |")
    if args.no_time:
        return
    torch.manual_seed(0)
    plain = tdaf.create_model("simplebaseline_resnet50").eval()
    tdaf_m = tdaf.create_model("tdaf_simplebaseline_resnet50", anar="anar3").eval()
    x = torch.randn(args.batch, 3, 256, 192)
    interleaved_latency([plain, tdaf_m], x, rounds=1, warmup=2)
    ratios, times = [], []
    for _ in range(args.rounds):
        a, b = interleaved_latency([plain, tdaf_m], x, rounds=1, warmup=0)
        ratios.append(b / a)
        times.append((a, b))
    print(f"\nforward time, ResNet-50 SimpleBaseline vs TDAF ANAR-3 3F, batch {args.batch} at 256x192, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds:")
    print(f"  plain median {statistics.median(t[0] for t in times):.1f} ms, TDAF median "
          f"{statistics.median(t[1] for t in times):.1f} ms")
    print(f"  ratio TDAF/plain: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
