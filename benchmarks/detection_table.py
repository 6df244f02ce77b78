"""Tab. 4-style numbers of the FCOS detectors: parameters (80 COCO classes, as the paper
counts them), GMACs of backbone + FPN + head at a stated input (both on the meta device:
no memory, no weights), and the CPU forward-time ratio TDAF / plain of whole detectors
(resize, backbone, head, NMS) over interleaved rounds.

    PYTHONPATH=src python benchmarks/detection_table.py [--size 800x1216] [--time-size 320] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import tdaf
from tdaf.cli._table import format_table
from tdaf.detection import backbone_of
from tdaf.profile import count_params

# (backbone, TDAF setting) -> the paper's Tab. 4 params (M); None where it has no row.
PAPER = {
    ("R50", None): 32.244, ("R50", ("anar3", 3)): 32.462, ("R50", ("anar3", 4)): None, ("R50", ("anar5", 3)): 32.885,
    ("R101", None): 51.184, ("R101", ("anar3", 3)): 51.454, ("R101", ("anar3", 4)): 51.454,
    ("R101", ("anar5", 3)): 51.877,
}
NAMES = {"R50": "resnet50", "R101": "resnet101"}


def build(backbone: str, setting: tuple[str, int] | None, **kwargs: object) -> torch.nn.Module:
    if setting is None:
        return tdaf.create_model(f"fcos_{NAMES[backbone]}_fpn", num_classes=80, frozen_bn=True, **kwargs)
    anar, flows = setting
    return tdaf.create_model(f"tdaf_fcos_{NAMES[backbone]}_fpn", num_classes=80, frozen_bn=True, anar=anar,
                             flows=flows, **kwargs)


def gmacs(model: torch.nn.Module, h: int, w: int) -> float:
    """Backbone + FPN + FCOS head on one (1, 3, h, w) meta tensor (FlopCounterMode; MACs = FLOPs / 2)."""
    x = torch.empty(1, 3, h, w, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        feats = list(model.backbone(x).values())
        model.head(feats)
    return counter.get_total_flops() / 2 / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="800x1216", help="HxW for GMACs (default 800x1216: a 4:3 COCO image at 800)")
    p.add_argument("--time-size", type=int, default=320, help="shorter side for the CPU timing (default 320)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    rows = []
    for (bb, setting), paper in PAPER.items():
        with torch.device("meta"):
            m = build(bb, setting)
        params = count_params(m)
        anar = sum(p.numel() for p in backbone_of(m).attention.parameters()) if setting else 0
        label = "no attention" if setting is None else f"ANAR-{setting[0][-1]}, {setting[1]}F"
        rows.append([bb, label, f"{params / 1e6:.3f}M", f"{anar / 1e6:.3f}M",
                     "-" if paper is None else f"{paper:.3f}M", f"{gmacs(m, h, w):.1f}"])
    print(format_table(["backbone", "TDAF", "params (ours)", "of which ANAR", "params (paper)",
                        f"GMACs {h}x{w}"], rows, markdown=True))

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = dict(min_size=args.time_size, max_size=args.time_size * 2)
    plain, tdaf_model = build("R50", None, **size).eval(), build("R50", ("anar3", 3), **size).eval()
    x = [torch.rand(3, args.time_size, args.time_size)]
    ratios, times = [], {"plain": [], "tdaf": []}
    with torch.inference_mode():
        for m in (plain, tdaf_model):
            m(x)
        for _ in range(args.rounds):
            t = {}
            for name, m in (("plain", plain), ("tdaf", tdaf_model)):
                start = time.perf_counter()
                m(x)
                t[name] = time.perf_counter() - start
                times[name].append(t[name] * 1e3)
            ratios.append(t["tdaf"] / t["plain"])
    print(f"\nCPU forward, FCOS R50 vs TDAF ANAR-3 3F, 1x3x{args.time_size}x{args.time_size}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds: plain {statistics.median(times['plain']):.0f} ms, "
          f"TDAF {statistics.median(times['tdaf']):.0f} ms (medians); ratio TDAF/plain median "
          f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
