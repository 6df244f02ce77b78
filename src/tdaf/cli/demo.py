"""``tdaf demo``: the main job. Train ResNet-18 and TDAF-ResNet-18 on real handwritten digits
with one recipe and seed, then compare them (accuracy, params, GMACs, latency, curves).

The data are scikit-learn's bundled digits (1,797 real scans, no download; see
:mod:`tdaf.data.digits`), so the comparison runs on any fresh machine in minutes on
2 CPU cores. The TDAF model is the paper's CIFAR setting (§4.1, Tab. 2): ANAR-3, 3
flows, all BN layers as MFBN.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..data.digits import digits_pixels
from ..engine.checkpoint import model_from_checkpoint
from ..engine.config import TrainConfig
from ..engine.trainer import Trainer
from ..profile import count_gmacs, count_params, interleaved_latency
from ..viz import checkpoint_attention_figures
from ._common import add_device_arg, add_progress_arg, add_threads_arg, apply_threads
from ._table import format_table as layout_table

log = logging.getLogger("tdaf.demo")

BASELINE = "resnet18_cifar"
TDAF_MODEL = "tdaf_resnet18_cifar"

# The one recipe both models train with (configs/digits_*.yaml hold the same values).
DEMO_RECIPE: dict[str, Any] = dict(
    data="digits",
    epochs=2,
    batch_size=32,
    lr=0.1,
    lr_batch=256,  # the paper's rule: lr 0.1 x batch / 256
    momentum=0.9,
    weight_decay=1e-4,
    schedule="cosine",  # a 2-epoch run has no room for step decays
    warmup_epochs=0.3,
    seed=0,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="main job: train ResNet-18 and TDAF-ResNet-18 on digits, compare them",
        description="Train the plain and the TDAF CIFAR-style ResNet-18 (ANAR-3, 3 flows, MFBN) on scikit-learn's "
        "real handwritten digits (32x32) with the same recipe and seed, then print a comparison table "
        "(top-1, top-5, params, GMACs, latency) and write OUT/curves.png, OUT/summary.json and OUT/summary.csv. "
        "Takes a few minutes on 2 CPU cores; nothing is downloaded.",
        epilog="example: tdaf demo --out runs/demo",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=DEMO_RECIPE["epochs"],
                   help=f"epochs per model (default {DEMO_RECIPE['epochs']})")
    p.add_argument("--batch-size", type=int, default=DEMO_RECIPE["batch_size"],
                   help=f"batch size (default {DEMO_RECIPE['batch_size']})")
    p.add_argument("--seed", type=int, default=DEMO_RECIPE["seed"], help="seed for both models (default 0)")
    p.add_argument("--flows", type=int, default=3, help="TDAF flows (default 3)")
    p.add_argument("--anar", default="anar3", help="TDAF attention module (default anar3)")
    p.add_argument("--train-subset", type=int, default=None, help="train on N of the 1,437 training images")
    add_threads_arg(p)
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    out = Path(args.out)
    recipe = dict(DEMO_RECIPE, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                  train_subset=args.train_subset, device=args.device, progress=args.progress, overwrite=True)
    runs: list[dict[str, Any]] = []
    models: list[torch.nn.Module] = []
    start = time.perf_counter()
    for name, extra in ((BASELINE, {}), (TDAF_MODEL, {"flows": args.flows, "anar": args.anar})):
        cfg = TrainConfig.from_dict({**recipe, "model": name, **extra, "out": str(out / name)}, "tdaf demo")
        log.info("training %s", name)
        t0 = time.perf_counter()
        result = Trainer(cfg).fit()
        train_s = time.perf_counter() - t0
        final = result["history"][-1]
        model, meta = model_from_checkpoint(result["last"])
        models.append(model)
        runs.append({
            "model": name, "flows": extra.get("flows", "-"), "anar": extra.get("anar", "-"),
            "top1": final["val_top1"], "top5": final["val_top5"], "best_top1": result["best_metric"],
            "params": count_params(model), "gmacs": count_gmacs(model, torch.randn(1, *meta["input_size"])),
            "threads": torch.get_num_threads(), "train_s": train_s, "epochs": cfg.epochs,
            "checkpoint": str(result["last"]), "history": result["history"],
            "steps": [list(s) for s in result["steps"]],
        })
    for r, ms in zip(runs, interleaved_latency(models, torch.randn(1, *meta["input_size"]), rounds=30, warmup=3)):
        r["latency_ms"] = ms
    total_s = time.perf_counter() - start
    table = format_table(runs)
    print(table)
    curves = save_curves(runs, out / "curves.png")
    summary = {"recipe": {k: v for k, v in recipe.items() if k not in ("progress", "overwrite")},
               "data": "digits (scikit-learn, 1437 train / 360 test, 32x32)", "total_s": total_s,
               "torch_threads": torch.get_num_threads(), "runs": runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "summary.csv", "w", newline="") as f:
        keys = ["model", "anar", "flows", "top1", "top5", "best_top1", "params", "gmacs", "latency_ms", "train_s"]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)
    print(f"\ntotal {total_s / 60:.1f} min on {torch.get_num_threads()} CPU threads; curves: {curves}; "
          f"summary: {out / 'summary.json'}, {out / 'summary.csv'}")
    print(f"checkpoints: {runs[0]['checkpoint']}, {runs[1]['checkpoint']} "
          f"(e.g. tdaf eval --checkpoint {runs[1]['checkpoint']} --json)")
    print(f"attention pictures (paper Fig. 3b/c): {', '.join(map(str, attention_pictures(runs[1]['checkpoint'], out)))}")
    return 0


def format_table(runs: list[dict[str, Any]]) -> str:
    """The comparison table: accuracy on the 360 test digits after the last epoch, cost per image."""
    base = runs[0]
    head = ["Model", "ANAR", "#F", "Top-1", "Top-5", "Params", "GMACs", "Latency (ms)", "Train (s)"]
    rows = []
    for r in runs:
        rel = r is not base
        rows.append([
            r["model"], str(r["anar"]), str(r["flows"]),
            f"{100 * r['top1']:.2f}" + (f" ({100 * (r['top1'] - base['top1']):+.2f})" if rel else ""),
            f"{100 * r['top5']:.2f}",
            f"{r['params'] / 1e6:.3f}M" + (f" ({r['params'] / base['params'] - 1:+.1%})" if rel else ""),
            f"{r['gmacs']:.3f}" + (f" ({r['gmacs'] / base['gmacs'] - 1:+.1%})" if rel else ""),
            f"{r['latency_ms']:.1f}" + (f" ({r['latency_ms'] / base['latency_ms'] - 1:+.1%})" if rel else ""),
            f"{r['train_s']:.0f}",
        ])
    note = (f"digits test split (360 images) after epoch {base['epochs']}; top-1/top-5 in %; GMACs = FLOPs/2 per "
            f"32x32 image; latency: median CPU forward of 1 image on {base['threads']} threads")
    return layout_table(head, rows, note)


def save_curves(runs: list[dict[str, Any]], path: Path) -> Path:
    """Training loss and test top-1 per epoch of both models (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for r, marker, color in zip(runs, ("o", "s"), ("tab:blue", "tab:red")):
        label = r["model"] if r["flows"] == "-" else f"{r['model']} ({r['anar']}, {r['flows']} flows)"
        if r.get("steps"):  # per optimizer step, with an exponential moving average over ~10 steps
            x, loss = zip(*r["steps"])
            ema, smooth = loss[0], []
            for v in loss:
                ema = 0.9 * ema + 0.1 * v
                smooth.append(ema)
            ax_loss.plot(x, loss, color=color, alpha=0.25, linewidth=0.8)
            ax_loss.plot(x, smooth, color=color, label=label)
        else:
            ax_loss.plot([h["epoch"] for h in r["history"]], [h["train_loss"] for h in r["history"]],
                         marker=marker, color=color, label=label)
        ax_acc.plot([h["epoch"] for h in r["history"]], [100 * h["val_top1"] for h in r["history"]],
                    marker=marker, color=color, label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss per step (digits)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="Test top-1 (360 digits)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- Attention pictures of the trained TDAF model (added with tdaf attention; see docs/attention.md) ---

def attention_pictures(checkpoint: str | Path, out: Path, digits: tuple[int, ...] = (0, 3, 8)) -> list[Path]:
    """OUT/attention/testN_digitD.attention.png: the stages x flows attention grid of the
    checkpoint on the first test image of each digit in ``digits``."""
    import numpy as np
    from PIL import Image

    images, labels = digits_pixels("val")
    picks = [int(np.flatnonzero(labels == d)[0]) for d in digits]
    named = [(f"test{i}_digit{labels[i]}", Image.fromarray(images[i], "L")) for i in picks]
    return checkpoint_attention_figures(checkpoint, named, out / "attention")
