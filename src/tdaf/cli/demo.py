"""``tdaf demo``: the main job. Train ResNet-18 and TDAF-ResNet-18 on cluttered handwritten
digits over several seeds with one recipe, then say what the difference is and how sure
that is (per-seed results, mean ± std, the paired difference with its 95% interval, and a
verdict the interval supports), with attention pictures of the trained TDAF model.

The data are scikit-learn's real digits at random places on 48x48 canvases among
fragments of other digits (:mod:`tdaf.data.cluttered`: finding the digit is the task,
the protocol of Mnih et al. 2014 that the paper cites); nothing is downloaded. The TDAF
model is the paper's ImageNet setting (§4.1, Tab. 3a) on an ImageNet-stem ResNet-18:
ANAR-3, 3 flows, all BatchNorm layers as MFBN, no ANAR layer narrower than 8 channels
(the library's default: Table 1's c/32 would be 1-4 channels on this half-width model).
It also says what the trained attention does: per stage and flow the focus on the digit
with its interval over seeds, and what the image-specific part of the maps is worth.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import collate_skip
from ..data.cluttered import cluttered_digits
from ..engine.checkpoint import model_from_checkpoint
from ..engine.config import TrainConfig
from ..engine.evaluate import EvalOptions, open_checkpoint
from ..engine.monitor import checkpoint_attention_stats
from ..engine.trainer import Trainer
from ..errors import UserError
from ..evidence import (
    bootstrap_paired, format_interval, format_pm, mean_interval, mean_std, paired_difference, verdict,
)
from ..io.files import atomic_write_bytes, json_safe
from ..io.outputs import Outputs
from ..profile import count_gmacs, count_params, interleaved_latency
from ..r2dns import ATTENTION_INITS
from ..viz import checkpoint_attention_figures
from ._common import add_device_arg, add_overwrite_arg, add_progress_arg, add_threads_arg, apply_threads
from ._table import format_table as layout_table

log = logging.getLogger("tdaf.demo")

BASELINE = "resnet18_w32"
TDAF_MODEL = "tdaf_resnet18_w32"
DEMO_SEEDS = 4

# The one recipe both models train with, seed by seed (configs/_cluttered_recipe.yaml holds
# the same values). Chosen by measurement for a short CPU run that TDAF trains reliably:
# warm-up, clipping and the attention initialisation are in docs/results.md.
DEMO_RECIPE: dict[str, Any] = dict(
    data="cluttered_digits",
    epochs=8,
    batch_size=32,
    optimizer="sgd",
    lr=0.1,
    lr_batch=32,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="cosine",
    warmup_epochs=1.0,
    clip_grad_norm=5.0,
    seed=0,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="main job: ResNet-18 vs TDAF-ResNet-18 on cluttered digits over seeds, with an interval",
        description="Train the plain and the TDAF ResNet-18 (ANAR-3, 3 flows, MFBN, ANAR layers >= 8 channels) on "
        "cluttered handwritten digits "
        "(a real digit at a random place on a 48x48 canvas among fragments of other digits; built in, nothing "
        "downloaded) with one recipe for each of --seeds seeds, then print each seed's test top-1, mean ± std per "
        "model, the paired difference with its 95%% interval over seeds (and a bootstrap over test images), and a "
        "verdict that says only what the interval allows; then what the trained attention does: per stage and "
        "flow the focus on the digit (mean gate inside its box / outside) with its interval over seeds, and the "
        "top-1 lost when the maps are replaced by their average over images or by a constant. Writes "
        "OUT/summary.json, OUT/summary.csv, OUT/curves.png, attention pictures of the first seed's TDAF model "
        "(OUT/attention/) and every checkpoint. About 15 minutes on 2 CPU cores for 4 seeds.",
        epilog="examples: tdaf demo --out runs/demo ; tdaf demo --seeds 100-103 --out runs/demo  (make demo: seeds "
        "that took no part in choosing the recipe)",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--seeds", type=seed_list, default=list(range(DEMO_SEEDS)), metavar="SEEDS",
                   help=f"the seeds, each training both models: N (seeds 0..N-1), A-B (seeds A..B) or a list "
                   f"A,B,C (default {DEMO_SEEDS}: 0-{DEMO_SEEDS - 1}; >= 2 for an interval). Seeds that took no part "
                   f"in choosing the recipe, e.g. 100-103, test it afresh")
    p.add_argument("--epochs", type=int, default=DEMO_RECIPE["epochs"],
                   help=f"epochs per run (default {DEMO_RECIPE['epochs']})")
    p.add_argument("--batch-size", type=int, default=DEMO_RECIPE["batch_size"],
                   help=f"batch size (default {DEMO_RECIPE['batch_size']})")
    p.add_argument("--flows", type=int, default=3, help="TDAF flows (default 3)")
    p.add_argument("--anar", default="anar3", help="TDAF attention module (default anar3)")
    p.add_argument("--attention-init", choices=list(ATTENTION_INITS), default="auto",
                   help="how the ANARs start (default auto)")
    p.add_argument("--train-subset", type=int, default=None, help="train on N of the 3,000 training canvases")
    p.add_argument("--val-subset", type=int, default=None, help="test on N of the 1,000 test canvases")
    add_overwrite_arg(p, "replace the runs, pictures and summaries of an earlier demo in OUT (`make demo` passes it)")
    add_threads_arg(p)
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def seed_list(text: str) -> list[int]:
    """``--seeds``: ``N`` (seeds 0..N-1), ``A-B`` (A..B) or ``A,B,C``; distinct seeds >= 0."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            seeds = list(range(lo, hi + 1))
        elif "," in text:
            seeds = [int(v) for v in text.split(",")]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: N >= 1 (seeds 0..N-1), A-B with 0 <= A <= B, or "
                                         f"distinct seeds A,B,C")
    return seeds


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    out = Path(args.out)
    outputs = claim_outputs(out, args.seeds, args.overwrite)  # every name checked before any training
    warmup = min(DEMO_RECIPE["warmup_epochs"], args.epochs / 5)  # a fifth of a shorter run
    recipe = dict(DEMO_RECIPE, epochs=args.epochs, warmup_epochs=warmup, batch_size=args.batch_size,
                  train_subset=args.train_subset,
                  val_subset=args.val_subset, device=args.device, overwrite=args.overwrite,
                  # --progress's default (None: bars on a terminal, plain lines elsewhere) is the trainer's True
                  progress=True if args.progress is None else args.progress,
                  tensorboard=False)
    tdaf_extra = {"flows": args.flows, "anar": args.anar, "attention_init": args.attention_init}
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for name, extra in ((BASELINE, {}), (TDAF_MODEL, tdaf_extra)):
            runs.append(train_one(name, seed, {**recipe, **extra}, out))
    plain = [r for r in runs if r["model"] == BASELINE]
    tdaf = [r for r in runs if r["model"] == TDAF_MODEL]
    costs = measure_costs([plain[0]["checkpoint"], tdaf[0]["checkpoint"]])
    report = compare(plain, tdaf)
    total_s = time.perf_counter() - start
    print(format_seed_table(plain, tdaf))
    print()
    print(format_summary(plain, tdaf, costs, report))
    print()
    print(report["verdict_line"])
    print(report["bootstrap_line"])
    attention = attention_report(tdaf, args.val_subset)
    print()
    print(attention["text"])
    pictures = attention_pictures(tdaf[0]["checkpoint"], out, outputs)
    curves = save_curves(plain, tdaf, out / "curves.png", outputs)
    summary = {
        "recipe": {k: v for k, v in recipe.items() if k not in ("progress", "overwrite", "tensorboard")},
        "data": "cluttered_digits (48x48, 3000 train canvases from the 1437 training digits, 1000 test canvases "
                "from the 360 test digits)",
        "models": {"baseline": BASELINE, "tdaf": TDAF_MODEL, **tdaf_extra},
        "seeds": args.seeds, "total_s": total_s, "torch_threads": torch.get_num_threads(),
        "comparison": {k: v for k, v in report.items() if not k.endswith("_line")},
        "costs": costs, "attention": {k: v for k, v in attention.items() if k != "text"},
        "runs": [{k: v for k, v in r.items() if k != "correct"} for r in runs],
    }
    write_summary(summary, runs, out, outputs)
    outputs.commit()
    print(f"\ntotal {total_s / 60:.1f} min on {torch.get_num_threads()} CPU threads; curves: {curves}; "
          f"summary: {out / 'summary.json'}, {out / 'summary.csv'}")
    print(f"checkpoints: {out}/<model>_seed<N>/last.pt (e.g. tdaf eval --checkpoint {tdaf[0]['checkpoint']} --json)")
    print(f"attention pictures (paper Fig. 3b/c) of {TDAF_MODEL} seed {tdaf[0]['seed']}: "
          f"{', '.join(map(str, pictures))}")
    return 0


def claim_outputs(out: Path, seeds: list[int], overwrite: bool) -> Outputs:
    """Check every file the demo writes before it trains anything: the summaries, the
    curves, the attention pictures and each run folder (another run's checkpoints are
    replaced only with ``--overwrite``)."""
    outputs = Outputs(overwrite=overwrite)
    for name in ("summary.json", "summary.csv", "curves.png"):
        outputs.claim(out / name, "--out")
    for path in attention_picture_paths(out):
        outputs.claim(path, "--out")
    for seed in seeds:
        for name in (BASELINE, TDAF_MODEL):
            run = out / f"{name}_seed{seed}"
            outputs.claim_dir(run, "--out")
            if (run / "last.pt").exists() and not overwrite:
                raise UserError(f"--out: {run} holds an earlier run's checkpoints; pass --overwrite to replace "
                                f"them, or choose another --out")
    return outputs


def train_one(name: str, seed: int, recipe: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train one model with one seed; its test top-1 from per-image predictions."""
    cfg = TrainConfig.from_dict({**recipe, "model": name, "seed": seed, "out": str(out / f"{name}_seed{seed}")},
                                "tdaf demo")
    log.info("training %s, seed %d", name, seed)
    t0 = time.perf_counter()
    result = Trainer(cfg).fit()
    train_s = time.perf_counter() - t0
    final = result["history"][-1]
    correct = per_image_correct(result["last"], cfg.val_subset)
    return {
        "model": name, "seed": seed, "flows": recipe.get("flows", "-"), "anar": recipe.get("anar", "-"),
        "attention_init": recipe.get("attention_init", "-"),
        "top1": float(correct.mean()), "val_top1": final["val_top1"], "train_loss": final["train_loss"],
        "learned": learned(final["train_loss"], 10), "train_s": train_s, "epochs": cfg.epochs,
        "checkpoint": str(result["last"]), "history": result["history"],
        "steps": [list(s) for s in result["steps"]], "correct": correct,
    }


def learned(train_loss: float, num_classes: int) -> bool:
    """False for a run whose final training loss stayed near chance (ln K): it never learned."""
    return math.isfinite(train_loss) and train_loss < 0.9 * math.log(num_classes)


def model_and_test_set(checkpoint: str | Path, val_subset: int | None = None) -> tuple[torch.nn.Module, Any]:
    """A checkpoint's model (eval mode) and its test split with its own test transform (what
    ``tdaf eval`` evaluates it on)."""
    options = EvalOptions(subset=val_subset)
    task, opened = open_checkpoint(checkpoint, options)
    return opened.model.eval(), task.eval_data(opened, options).dataset


@torch.no_grad()
def per_image_correct(checkpoint: str | Path, val_subset: int | None = None) -> np.ndarray:
    """0/1 per test canvas (in order) for a checkpoint, with its own test transform."""
    model, val = model_and_test_set(checkpoint, val_subset)
    loader = torch.utils.data.DataLoader(val, batch_size=200, collate_fn=collate_skip)
    hits = [(model(b.inputs).argmax(1) == b.targets).numpy() for b in loader]
    return np.concatenate(hits).astype(np.uint8)


def measure_costs(checkpoints: list[str]) -> list[dict[str, Any]]:
    """Params, GMACs per 48x48 image and batch-1 CPU latency of each checkpoint's model."""
    models, rows = [], []
    for ckpt in checkpoints:
        model, meta = model_from_checkpoint(ckpt)
        x = torch.randn(1, *meta["input_size"])
        models.append(model.eval())
        rows.append({"params": count_params(model), "gmacs": count_gmacs(model, x)})
    for row, ms in zip(rows, interleaved_latency(models, x, rounds=30, warmup=3)):
        row["latency_ms"] = ms
        row["threads"] = torch.get_num_threads()
    return rows


def compare(plain: list[dict[str, Any]], tdaf: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the seeds where both runs learned, the paired difference with its t
    interval, the bootstrap over test images, and the verdict."""
    pairs = [(p, t) for p, t in zip(plain, tdaf) if p["learned"] and t["learned"]]
    failed = [f"{r['model']} seed {r['seed']}" for r in plain + tdaf if not r["learned"]]
    a = [100 * p["top1"] for p, _ in pairs]
    b = [100 * t["top1"] for _, t in pairs]
    diff = paired_difference(a, b)
    plain_ms, tdaf_ms = mean_std(a), mean_std(b)
    report: dict[str, Any] = {
        "seeds_used": [p["seed"] for p, _ in pairs], "did_not_learn": failed,
        "plain_mean": plain_ms.mean, "plain_std": plain_ms.std, "tdaf_mean": tdaf_ms.mean, "tdaf_std": tdaf_ms.std,
        "diff_mean": diff.mean, "diff_std": diff.std, "diff_low": diff.low, "diff_high": diff.high,
        "verdict_line": "verdict: " + verdict(diff),
    }
    if failed:
        report["verdict_line"] += (f"\n{len(failed)} of {len(plain) + len(tdaf)} runs did not learn (final training "
                                   f"loss near ln 10): {', '.join(failed)}; their pairs are left out of the means")
    if pairs:
        boot = bootstrap_paired(np.stack([p["correct"] for p, _ in pairs]), np.stack([t["correct"] for _, t in pairs]))
        report.update(boot_mean=100 * boot[0], boot_low=100 * boot[1], boot_high=100 * boot[2])
        report["bootstrap_line"] = (f"test-set noise alone (paired bootstrap over the {pairs[0][0]['correct'].size} "
                                    f"test canvases, seeds averaged): {100 * boot[0]:+.2f} points, 95% interval "
                                    f"[{100 * boot[1]:+.2f}, {100 * boot[2]:+.2f}]")
    else:
        report["bootstrap_line"] = "no pair of runs learned: nothing to compare"
    return report


def format_seed_table(plain: list[dict[str, Any]], tdaf: list[dict[str, Any]]) -> str:
    head = ["Seed", f"{BASELINE} top-1", f"{TDAF_MODEL} top-1", "TDAF - plain", "Train (s) plain / TDAF"]
    rows = []
    for p, t in zip(plain, tdaf):
        def cell(r: dict[str, Any]) -> str:
            return f"{100 * r['top1']:.2f}" + ("" if r["learned"] else " (did not learn)")

        rows.append([str(p["seed"]), cell(p), cell(t), f"{100 * (t['top1'] - p['top1']):+.2f}",
                     f"{p['train_s']:.0f} / {t['train_s']:.0f}"])
    n = len(plain[0]["correct"])
    return layout_table(head, rows, f"test top-1 (%) on {n} cluttered test canvases after epoch {plain[0]['epochs']}")


def format_summary(plain: list[dict[str, Any]], tdaf: list[dict[str, Any]], costs: list[dict[str, Any]],
                   report: dict[str, Any]) -> str:
    head = ["Model", "ANAR", "#F", "Top-1 mean ± std", "Params", "GMACs", "Latency (ms)"]
    rows = []
    base = costs[0]
    for runs, cost in ((plain, costs[0]), (tdaf, costs[1])):
        r = runs[0]
        rel = cost is not base
        ms = mean_std([100 * x["top1"] for x in runs if x["learned"]])
        rows.append([
            r["model"], str(r["anar"]), str(r["flows"]), f"{format_pm(ms)} (n={ms.n})",
            f"{cost['params'] / 1e6:.3f}M" + (f" ({cost['params'] / base['params'] - 1:+.1%})" if rel else ""),
            f"{cost['gmacs']:.3f}" + (f" ({cost['gmacs'] / base['gmacs'] - 1:+.1%})" if rel else ""),
            f"{cost['latency_ms']:.1f}" + (f" ({cost['latency_ms'] / base['latency_ms'] - 1:+.1%})" if rel else ""),
        ])
    d = report
    note = (f"top-1 over the seeds where both runs learned ({d['seeds_used']}); GMACs = FLOPs/2 per 48x48 image; "
            f"latency: median CPU forward of 1 image on {base['threads']} threads")
    return layout_table(head, rows, note)


def save_curves(plain: list[dict[str, Any]], tdaf: list[dict[str, Any]], path: Path,
                outputs: Outputs | None = None) -> Path:
    """Training loss and test top-1 per epoch, mean over seeds with the min-max band (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for runs, color in ((plain, "tab:blue"), (tdaf, "tab:red")):
        r0 = runs[0]
        label = r0["model"] if r0["flows"] == "-" else f"{r0['model']} ({r0['anar']}, {r0['flows']} flows)"
        label += f", {len(runs)} seeds"
        epochs = [h["epoch"] for h in r0["history"]]
        for ax, key, scale in ((ax_loss, "train_loss", 1.0), (ax_acc, "val_top1", 100.0)):
            values = np.array([[scale * h[key] for h in r["history"]] for r in runs])
            ax.plot(epochs, values.mean(0), marker="o", color=color, label=label)
            ax.fill_between(epochs, values.min(0), values.max(0), color=color, alpha=0.2)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss (mean, band: min-max over seeds)",
                yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="Test top-1, cluttered digits")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    if outputs is None:
        atomic_write_bytes(buf.getvalue(), path)
    else:
        outputs.stage(path, lambda f: f.write(buf.getvalue()))
    return path


def write_summary(summary: dict[str, Any], runs: list[dict[str, Any]], out: Path, outputs: Outputs) -> None:
    outputs.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False), out / "summary.json")
    buf = io.StringIO()
    keys = ["model", "seed", "anar", "flows", "attention_init", "top1", "learned", "train_loss", "train_s"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(runs)
    outputs.write_text(buf.getvalue(), out / "summary.csv")


# --- what the trained attention does -----------------------------------------------------

def _over_seeds(values: list[float]) -> dict[str, Any]:
    """One statistic over the seeds: its mean with the 95% interval, and each seed's value."""
    d = mean_interval(values)
    return {"mean": d.mean, "low": d.low, "high": d.high, "per_seed": values}


def attention_report(tdaf: list[dict[str, Any]], val_subset: int | None = None) -> dict[str, Any]:
    """What the trained attention does, over the seeds: per gate (stage s, flow f) the focus
    (mean gate inside the digit's box / outside, on the first test canvases; 1: no
    preference), the gate's spread over positions and images, and how far it moved from
    the start; and the ablation, the top-1 points lost on the test canvases when every
    gate is replaced by its average map over images (what the image-specific placement is
    worth) and by a constant (each image's own mean gate: any placement at all). Each
    run's numbers are added to its record as ``attention``."""
    options = EvalOptions(subset=val_subset, progress=False)
    for r in tdaf:
        # the gates on the test canvases training monitored (the task's monitor_count), so they
        # are the last epoch's logged numbers and "moved" is measured from the run's own start
        stats = checkpoint_attention_stats(r["checkpoint"], options)
        r["attention"] = {"gates": stats["gates"], "ablation": stats["ablation"], "images": stats["images"]}
    gates = list(tdaf[0]["attention"]["gates"])
    per_gate = {g: {stat: _over_seeds([r["attention"]["gates"][g][stat] for r in tdaf])
                    for stat in ("focus", "focus_applied", "std", "moved")} for g in gates}
    drops = {kind: _over_seeds([100 * r["attention"]["ablation"][f"{kind}_drop"] for r in tdaf])
             for kind in ("average_map", "constant")}
    above = [g for g in gates if per_gate[g]["focus"]["low"] > 1]
    n_images = tdaf[0]["attention"]["images"]
    rows = [[g, *(format_interval(per_gate[g][stat]["per_seed"], digits)
                  for stat, digits in (("focus", 2), ("focus_applied", 2), ("std", 3), ("moved", 3)))]
            for g in gates]
    head = ["Gate", "Focus [95%]", "Focus of g + eta", "Spread (std) [95%]", "Moved from start [95%]"]
    table = layout_table(head, rows,
                         f"attention of {TDAF_MODEL} per stage s and flow f over {len(tdaf)} seeds, the {n_images} test "
                         f"canvases training monitored; focus = mean gate g inside the digit's box / outside (1 = no "
                         f"preference); g + eta is the factor each stage applies")
    seeds = len(tdaf)
    found = (f"attention finds the digit: the focus of {', '.join(above)} is above 1 at 95% over {seeds} seeds"
             if above else f"attention does not measurably find the digit: no gate's focus is above 1 at 95% over "
             f"{seeds} seeds")
    ablation = (f"what the image-specific attention is worth (top-1 points lost on the test canvases when every gate "
                f"is replaced): by its average map over images {format_interval(drops['average_map']['per_seed'])}, "
                f"by a constant {format_interval(drops['constant']['per_seed'])}")
    return {"images": n_images, "gates": per_gate, "focus_above_1": above, "ablation_drop_points": drops,
            "text": "\n".join([table, "", found, ablation])}


PICTURES = (0, 1, 2, 3)  # the first cluttered test canvases


def _picture_names() -> list[str]:
    _, labels, _, _ = cluttered_digits("val")
    return [f"test{i}_digit{labels[i]}" for i in PICTURES]


def attention_picture_paths(out: Path) -> list[Path]:
    return [out / "attention" / f"{name}.attention.png" for name in _picture_names()]


def attention_pictures(checkpoint: str | Path, out: Path, outputs: Outputs | None = None) -> list[Path]:
    """OUT/attention/testN_digitD.attention.png: the stages x flows attention grid of the
    checkpoint on the first few cluttered test canvases."""
    from PIL import Image

    images, _, _, _ = cluttered_digits("val")
    named = [(name, Image.fromarray(images[i], "L")) for name, i in zip(_picture_names(), PICTURES)]
    kwargs = {} if outputs is None else {"outputs": outputs}
    return checkpoint_attention_figures(checkpoint, named, out / "attention", **kwargs)
