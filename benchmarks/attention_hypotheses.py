"""Why do the gates stay where they start? Each hypothesis as one setting of the main job,
trained over seeds, with what the attention became: its focus on the digit, what its
image-specific part is worth (the ablation), and the accuracy against the plain model.

Every setting trains ``tdaf demo``'s recipe (the same data order per seed) and changes one
thing; the plain model of the same data is trained once per seed as the baseline. For each
TDAF run it reads, from its last checkpoint, the gate statistics on 200 test canvases
(:func:`tdaf.engine.monitor.checkpoint_attention_stats`: focus = mean gate inside the
digit's box / outside) and the ablation on all test canvases (top-1 as trained, with every
gate replaced by its average map over images, and by a constant; each image keeping its own
mean gate). The table gives means over seeds with 95% intervals (Student's t).

    python benchmarks/attention_hypotheses.py --settings default width8 --seeds 0-2
    python benchmarks/attention_hypotheses.py --report        # the table of every run done

Each run's record (RECORDS/<setting>/seed<N>.json: top-1, history, gate statistics,
ablation) is kept beside this script, its checkpoints under OUT. Runs already recorded are read back, so settings can be trained
by two processes at once (``--threads 1`` each) and reported together.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tdaf.cli.demo import BASELINE, DEMO_RECIPE, TDAF_MODEL, learned, seed_list
from tdaf.engine.config import TrainConfig
from tdaf.engine.monitor import checkpoint_attention_stats
from tdaf.engine.options import EvalOptions
from tdaf.engine.trainer import Trainer
from tdaf.evidence import format_interval, mean_std
from tdaf.io.files import atomic_write_text, json_safe

# The TDAF model as the main job was before this study: Table 1's ANAR widths (no floor).
TABLE1 = {"model": TDAF_MODEL, "anar_min_width": 1}
# setting -> (what it tests, config values over the demo recipe); "plain" rows are baselines.
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("the baseline (48x48)", {"model": BASELINE}),
    "default": ("the main job before this study: Table 1 widths, identity start", TABLE1),
    "width8": ("too narrow: no ANAR layer below 8 channels (the main job since)",
               {"model": TDAF_MODEL, "anar_min_width": 8}),
    "no_wd": ("the optimiser: no weight decay on the ANARs, BN affines and biases",
              {**TABLE1, "attention_weight_decay": 0.0, "decay_norm_and_bias": False}),
    "lr10": ("the optimiser: ANARs at 10x the learning rate", {**TABLE1, "attention_lr_scale": 10.0}),
    "fan_in": ("the start: Kaiming fan-in around the identity level", {**TABLE1, "attention_init": "fan_in"}),
    "random": ("the start: Kaiming fan-out (gates near 0/1 on wide stages)",
               {**TABLE1, "attention_init": "random"}),
    "resize": ("the up-sampling: x2 resize + 3x3 conv instead of the 4x4 transposed conv",
               {**TABLE1, "anar_up": "resize"}),
    "long": ("too little training: 24 epochs instead of 8", {**TABLE1, "epochs": 24}),
    "plain_long": ("the baseline, 24 epochs", {"model": BASELINE, "epochs": 24}),
    "plain_small": ("the baseline on small digits (64x64, 16-20 px, 8 fragments of 8 px)",
                    {"model": BASELINE, "data": "cluttered_digits_small"}),
    "small": ("a task that needs attention: small digits in dense clutter",
              {**TABLE1, "data": "cluttered_digits_small"}),
    "plain_small_16": ("the baseline on small digits, 16 epochs",
                       {"model": BASELINE, "data": "cluttered_digits_small", "epochs": 16}),
    "small_16": ("small digits in dense clutter, 16 epochs",
                 {**TABLE1, "data": "cluttered_digits_small", "epochs": 16}),
    "small_16_width8": ("small digits, 16 epochs, no ANAR layer below 8 channels (the default since)",
                        {"model": TDAF_MODEL, "anar_min_width": 8, "data": "cluttered_digits_small", "epochs": 16}),
    "width8_fan_in": ("width floor 8 and fan-in start", {"model": TDAF_MODEL, "anar_min_width": 8,
                                                         "attention_init": "fan_in"}),
}


def baseline_of(setting: str) -> str:
    values = SETTINGS[setting][1]
    if values.get("data") == "cluttered_digits_small":
        return "plain_small_16" if values.get("epochs") == 16 else "plain_small"
    return "plain_long" if values.get("epochs") == 24 else "plain"


def run_one(setting: str, seed: int, out: Path, records: Path, threads: int | None) -> dict[str, Any]:
    path = records / setting / f"seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {**DEMO_RECIPE, **SETTINGS[setting][1], "seed": seed, "out": str(out / setting / f"seed{seed}"),
              "overwrite": True, "progress": False, "tensorboard": False, "threads": threads}
    cfg = TrainConfig.from_dict(values, f"setting {setting}")
    t0 = time.perf_counter()
    result = Trainer(cfg).fit()
    final = result["history"][-1]
    record: dict[str, Any] = {"setting": setting, "seed": seed, "top1": 100 * final["val_top1"],
                              "learned": learned(final["train_loss"], 10), "train_s": time.perf_counter() - t0,
                              "history": result["history"]}
    if SETTINGS[setting][1]["model"] != BASELINE:
        stats = checkpoint_attention_stats(result["last"], EvalOptions(progress=False), count=200)
        record["gates"] = stats["gates"]
        record["ablation"] = stats["ablation"]
    atomic_write_text(json.dumps(json_safe(record), indent=1), path)
    return record


def report(records: Path) -> str:
    rows = []
    done = {s: {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted((records / s).glob("seed*.json"))}
            for s in SETTINGS if (records / s).is_dir()}
    head = ("setting", "what it tests", "seeds", "top-1 mean ± std", "TDAF - plain [95%]", "focus, best gate [95%]",
            "focus range over gates", "gate std range", "top-1 lost: average map / constant")
    for setting, runs in done.items():
        if not runs:
            continue
        seeds = sorted(runs)
        top = mean_std([runs[s]["top1"] for s in seeds])
        cells = [setting, SETTINGS[setting][0], ",".join(map(str, seeds)), f"{top.mean:.2f} ± {top.std:.2f}"]
        base = done.get(baseline_of(setting), {})
        pairs = [s for s in seeds if s in base] if "gates" in runs[seeds[0]] else []
        cells.append(format_interval([runs[s]["top1"] - base[s]["top1"] for s in pairs]) if pairs else "-")
        if "gates" in runs[seeds[0]]:
            gates = sorted(runs[seeds[0]]["gates"])
            focus = {g: [runs[s]["gates"][g]["focus"] for s in seeds] for g in gates}
            best = max(gates, key=lambda g: sum(focus[g]) / len(focus[g]))
            means = [sum(v) / len(v) for v in focus.values()]
            cells.append(f"{best} {format_interval(focus[best])}")
            cells.append(f"{min(means):.2f}-{max(means):.2f}")
            spread = [sum(runs[s]["gates"][g]["std"] for s in seeds) / len(seeds) for g in gates]
            cells.append(f"{min(spread):.3f}-{max(spread):.3f}")
            drops_a = [100 * runs[s]["ablation"]["average_map_drop"] for s in seeds]
            drops_c = [100 * runs[s]["ablation"]["constant_drop"] for s in seeds]
            cells.append(f"{format_interval(drops_a)} / {format_interval(drops_c)}")
        else:
            cells += ["-", "-", "-", "-"]
        rows.append(cells)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def curve(records: Path, setting: str, seed: int) -> str:
    """Focus and spread per epoch of one run (from its training history: the monitored
    subset's statistics after every epoch), with the test top-1."""
    run = json.loads((records / setting / f"seed{seed}.json").read_text())
    gates = sorted({k[5:-6] for k in run["history"][0] if k.startswith("attn_") and k.endswith("_focus")})
    head = ["epoch", "top-1", *(f"{g} focus / std" for g in gates)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for h in run["history"]:
        cells = [str(h["epoch"]), f"{100 * h['val_top1']:.1f}"]
        cells += [f"{h[f'attn_{g}_focus']:.2f} / {h[f'attn_{g}_std']:.3f}" for g in gates]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=[])
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2],
                   help="as tdaf demo's: N (seeds 0..N-1), A-B or A,B,C (default 0-2)")
    p.add_argument("--out", type=Path, default=Path("runs/hypotheses"), help="checkpoints (default runs/hypotheses)")
    p.add_argument("--records", type=Path, default=Path(__file__).resolve().parent / "results" / "attention_hypotheses",
                   help="one JSON per run (default benchmarks/results/attention_hypotheses)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: automatic)")
    p.add_argument("--report", action="store_true", help="print the table of every run in --records")
    p.add_argument("--curve", nargs=2, metavar=("SETTING", "SEED"), help="print one run's focus per epoch")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    for setting in args.settings:
        for seed in args.seeds:
            t0 = time.perf_counter()
            r = run_one(setting, seed, args.out, args.records, args.threads)
            print(f"{setting} seed {seed}: top-1 {r['top1']:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.curve:
        print(curve(args.records, args.curve[0], int(args.curve[1])))
    if args.report or args.settings:
        print(report(args.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
