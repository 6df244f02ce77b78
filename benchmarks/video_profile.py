"""Tab. 6-style numbers of the video models: parameters and GMACs per clip of plain and TDAF
3D-ResNet-50/101 beside the paper's, and the forward-time ratio TDAF / plain.

Parameters and GMACs (``torch.utils.flop_counter``, MACs = FLOPs / 2) are counted on the
meta device (no memory, exact). Forward time: eval-mode forwards of one clip, the plain and
the TDAF model timed in turn within each round (:func:`tdaf.profile.interleaved_latency`
per round), so load changes on a shared machine hit both alike; the ratio of each round is
reported as median and spread (min..max).

    PYTHONPATH=src python benchmarks/video_profile.py --rounds 5 --threads 1 [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import tdaf
from tdaf.profile import count_gmacs, count_params, interleaved_latency

# Paper Tab. 6 (Kinetics-400, 16 x 112 x 112): parameters in millions (no R101 TDAF row).
PAPER = {"r3d_resnet50": 47.019, "tdaf_r3d_resnet50": 48.417, "r3d_resnet101": 86.065}


def counts(name: str, size: tuple[int, ...]) -> dict[str, float]:
    with torch.device("meta"):
        model = tdaf.create_model(name)
        return {"params": count_params(model), "gmacs": count_gmacs(model, torch.empty(1, *size))}


def time_ratio(plain: str, tdaf_name: str, size: tuple[int, ...], rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    models = [tdaf.create_model(plain).eval(), tdaf.create_model(tdaf_name).eval()]
    x = torch.randn(1, *size)
    ratios, times = [], []
    for r in range(rounds):
        ms = interleaved_latency(models, x, rounds=1, warmup=1 if r == 0 else 0)
        times.append(ms)
        ratios.append(ms[1] / ms[0])
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "plain_ms_median": statistics.median(t[0] for t in times),
            "tdaf_ms_median": statistics.median(t[1] for t in times), "rounds": rounds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[50, 101])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (0: counts only)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the timing")
    p.add_argument("--time-size", type=int, nargs=3, default=None, metavar=("T", "H", "W"),
                   help="clip size for the timing (default: the models' 16 112 112)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for d in args.depths:
        plain, name = f"r3d_resnet{d}", f"tdaf_r3d_resnet{d}"
        size = tuple(tdaf.model_cfg(plain)["input_size"])
        a, b = counts(plain, size), counts(name, size)
        row = {"depth": d, "plain": a, "tdaf": b, "paper": {k: PAPER.get(k) for k in (plain, name)}}
        if args.rounds:
            tsize = (3, *args.time_size) if args.time_size else size
            row["time"] = {"clip": list(tsize), "threads": args.threads,
                           **time_ratio(plain, name, tsize, args.rounds)}
        rows.append(row)
        if not args.markdown:
            print(json.dumps(row))
    if args.markdown:
        print("| Model | Params (M) | Paper params (M) | GMACs / clip | Forward time TDAF / plain |")
        print("|---|---|---|---|---|")
        for r in rows:
            for key, model in (("plain", f"r3d_resnet{r['depth']}"), ("tdaf", f"tdaf_r3d_resnet{r['depth']}")):
                paper = r["paper"][model]
                t = r.get("time")
                ratio = (f"{t['ratio_median']:.2f} ({t['ratio_min']:.2f}-{t['ratio_max']:.2f})"
                         if t and key == "tdaf" else "1" if t else "-")
                print(f"| `{model}` | {r[key]['params'] / 1e6:.3f} | {paper if paper else '-'} | "
                      f"{r[key]['gmacs']:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
