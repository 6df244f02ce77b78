"""Accuracy of TDAF against its plain baseline, per task, over seeds: what a quick run can
show and how sure it is.

For each task it trains the plain and the TDAF quick run (the pair of configs below; they
differ only in the model) for seeds 0..N-1 and prints each seed's final metric, mean ± std
per model, the paired difference TDAF - plain with its 95% Student's t interval over
seeds, a verdict that says only what the interval allows, and the wall time. For
classification (the main job's data and recipe, as ``tdaf demo``) it also trains ANAR-5
and ANAR-7 (the paper orders them ANAR-3 < 5 < 7) and TDAF with each attention
initialisation, so the default of ``attention_init`` is chosen by data; ``finetune``
starts from each seed's trained plain classifier (``--init-from``) and compares training
it on with TDAF under each attention initialisation.

    python benchmarks/accuracy.py --task classification --seeds 3
    python benchmarks/accuracy.py --task all --seeds 3 --json runs/accuracy.json
    python benchmarks/accuracy.py --task classification --rows tdaf_resnet18_w32 --set lr=0.05

``--set KEY=VALUE`` changes one setting of every row, baseline included (a recipe probe:
the peak learning rate, the warm-up, gradient clipping; a TDAF setting such as
``attention_init`` changes the TDAF rows only); runs it changes get their own folders.

Runs that did not learn are reported and counted, and left out of the means with their
pair. Nothing here is timed against anything else: wall times are for planning.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from tdaf.cli.demo import BASELINE, DEMO_RECIPE, TDAF_MODEL, learned
from tdaf.engine.config import TrainConfig, load_config_file
from tdaf.engine.task import task_for_config
from tdaf.engine.trainer import Trainer
from tdaf.evidence import format_interval, format_pm, mean_interval, mean_std, paired_difference, verdict
from tdaf.io.files import atomic_write_text, json_safe
from tdaf.r2dns import TDAF_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]

# Rows per task: (label, config values); the first row is the baseline every other row is
# compared with, seed by seed.
# The first two rows are tdaf demo's runs (same recipe, seeds and folder names: a demo's
# --out given as OUT/classification is reused).
CLASSIFICATION_ROWS: list[tuple[str, dict[str, Any]]] = [
    (BASELINE, {**DEMO_RECIPE, "model": BASELINE}),
    (TDAF_MODEL, {**DEMO_RECIPE, "model": TDAF_MODEL, "flows": 3, "anar": "anar3", "attention_init": "auto"}),
    (f"{TDAF_MODEL} anar3 random", {**DEMO_RECIPE, "model": TDAF_MODEL, "anar": "anar3", "attention_init": "random"}),
    (f"{TDAF_MODEL} anar5 identity", {**DEMO_RECIPE, "model": TDAF_MODEL, "anar": "anar5",
                                      "attention_init": "identity"}),
    (f"{TDAF_MODEL} anar7 identity", {**DEMO_RECIPE, "model": TDAF_MODEL, "anar": "anar7",
                                      "attention_init": "identity"}),
]
QUICK_RUNS: dict[str, tuple[str, str]] = {
    "detection": ("configs/detection/digit_scenes_fcos_resnet18_fpn.yaml",
                  "configs/detection/digit_scenes_tdaf_fcos_resnet18_fpn.yaml"),
    "pose": ("configs/pose/stick_figures_simplebaseline_resnet18.yaml",
             "configs/pose/stick_figures_tdaf_simplebaseline_resnet18.yaml"),
    "video": ("configs/video/moving_digits_r3d_resnet10_w16.yaml",
              "configs/video/moving_digits_tdaf_r3d_resnet10_w16.yaml"),
}
# Fine-tuning from a trained plain model (the "classification" baseline of the same seed):
# the plain model trained on, and TDAF started from it with either attention initialisation.
FINETUNE = {**DEMO_RECIPE, "epochs": 2, "lr": DEMO_RECIPE["lr"] / 10, "warmup_epochs": 0.0}
FINETUNE_ROWS: list[tuple[str, dict[str, Any]]] = [
    (f"{BASELINE} trained on", {**FINETUNE, "model": BASELINE}),
    (f"{TDAF_MODEL} random", {**FINETUNE, "model": TDAF_MODEL, "attention_init": "random"}),
    (f"{TDAF_MODEL} identity", {**FINETUNE, "model": TDAF_MODEL, "attention_init": "identity"}),
]
TASKS = ("classification", "finetune", *QUICK_RUNS)


def rows_for(task: str) -> list[tuple[str, dict[str, Any]]]:
    if task == "classification":
        return CLASSIFICATION_ROWS
    if task == "finetune":
        return FINETUNE_ROWS
    return [(Path(p).stem, {k: v for k, v in load_config_file(ROOT / p).items() if k != "out"})
            for p in QUICK_RUNS[task]]


def train(values: dict[str, Any], seed: int, out: Path, threads: int | None) -> dict[str, Any]:
    """One run; a finished run already in ``out`` (same row and seed: ``tdaf demo`` names its
    folders alike) is read back through resume, which trains nothing when no epoch is left."""
    done = out / "last.pt"
    cfg = TrainConfig.from_dict({**values, "seed": seed, "out": str(out), "overwrite": not done.exists(),
                                 "resume": str(done) if done.exists() else None, "progress": False,
                                 "tensorboard": False, "threads": threads}, "benchmarks/accuracy.py")
    key = task_for_config(cfg).main_metric
    trainer = Trainer(cfg)
    result = trainer.fit()
    final = result["history"][-1]
    loss = float(final["train_loss"])
    # "did not learn": a classifier's (image or video) cross-entropy near ln K; dense tasks: AP at its floor
    classes = len(trainer.meta.get("class_names") or ())
    ok = (learned(loss, classes) if cfg.task in ("classification", "video") and classes
          else float(final[f"val_{key}"]) > 0.01)
    row = {"metric": key, "value": float(final[f"val_{key}"]), "train_loss": loss, "learned": bool(ok) and
           math.isfinite(loss), "wall_s": sum(h["epoch_time_s"] for h in result["history"])}
    # does attention find the object? The focus per gate the training's monitor logged after the last epoch
    focus = {k[5:-6]: float(v) for k, v in final.items() if k.startswith("attn_") and k.endswith("_focus")}
    if focus:
        row["attention_focus"] = focus
        row["attention_monitor_s"] = sum(h.get("attn_monitor_s", 0.0) for h in result["history"])
    return row


def plain_checkpoint(seed: int, out: Path, threads: int | None) -> str:
    """The classification baseline of ``seed`` (trained here if the classification task
    has not written it yet): what the fine-tuning rows start from."""
    label, values = CLASSIFICATION_ROWS[0]
    path = out / "classification" / f"{label.replace(' ', '_')}_seed{seed}"
    if not (path / "last.pt").exists():
        train(values, seed, path, threads)
    return str(path / "last.pt")


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``--set lr=0.05 warmup_epochs=0``: each value read as YAML (numbers, null, true)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key not in TrainConfig.__dataclass_fields__:
            raise SystemExit(f"--set: expected KEY=VALUE with KEY a training setting "
                             f"(e.g. lr=0.05, warmup_epochs=0, clip_grad_norm=null), got {item!r}")
        if key in ("model", "seed", "out", "task", "data"):
            raise SystemExit(f"--set: {key} is what a row or the seed loop sets; got {item!r}")
        settings[key] = yaml.safe_load(value)
    return settings


def run_task(task: str, seeds: int, out: Path, threads: int | None, only: list[str] | None,
             settings: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = [r for r in rows_for(task) if only is None or r[0] in only or r is rows_for(task)[0]]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in rows}
    settings = settings or {}
    for seed in range(seeds):  # seed-major: a cut-short run still has complete pairs
        start = {"init_from": plain_checkpoint(seed, out, threads)} if task == "finetune" else {}
        for label, values in rows:
            # a TDAF setting (attention_init, flows, ...) changes the TDAF rows only
            own = {k: v for k, v in settings.items() if k not in TDAF_DEFAULTS or values["model"].startswith("tdaf_")}
            # a row the settings leave as it was shares the plain folder (its finished runs are read back)
            folder = out / (task + "".join(f"_{k}={v}" for k, v in own.items()))
            r = train({**values, **start, **own}, seed, folder / f"{label.replace(' ', '_')}_seed{seed}", threads)
            results[label].append(r)
            print(f"[{task}] {label} seed {seed}: {r['metric']} {100 * r['value']:.2f}"
                  f"{'' if r['learned'] else ' (did not learn)'} in {r['wall_s']:.0f} s", flush=True)
    return {"task": task, "seeds": seeds, "settings": settings, "rows": results}


def report(res: dict[str, Any]) -> str:
    rows = res["rows"]
    labels = list(rows)
    base = rows[labels[0]]
    metric = base[0]["metric"]
    changed = "".join(f", {k}={v}" for k, v in res.get("settings", {}).items())
    lines = [f"### {res['task']} ({res['seeds']} seeds, final-epoch {metric}, %{changed})", "",
             "| model | per seed | mean ± std | TDAF - plain, 95% interval | verdict | wall s / run |",
             "|---|---|---|---|---|---|"]
    for label in labels:
        runs = rows[label]
        per_seed = ", ".join(f"{100 * r['value']:.2f}" + ("" if r["learned"] else "*") for r in runs)
        ms = mean_std([100 * r["value"] for r in runs if r["learned"]])
        wall = mean_std([r["wall_s"] for r in runs])
        if label == labels[0]:
            diff_cell, verdict_cell = "-", "-"
        else:
            pairs = [(b, r) for b, r in zip(base, runs) if b["learned"] and r["learned"]]
            d = paired_difference([100 * b["value"] for b, _ in pairs], [100 * r["value"] for _, r in pairs])
            diff_cell = (f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" if d.n >= 2 else
                         f"{d.mean:+.2f} (n={d.n})")
            verdict_cell = verdict(d, what=label).split(":")[0]
        lines.append(f"| {label} | {per_seed} | {format_pm(ms)} | {diff_cell} | {verdict_cell} | {wall.mean:.0f} |")
    focus_rows = [(label, runs) for label, runs in rows.items() if runs and "attention_focus" in runs[0]]
    if focus_rows:
        lines += ["", "attention on the object (focus: mean gate inside the object / outside on the validation "
                      "subset the training monitors, after the last epoch; 1 = no preference), mean [95% interval] "
                      "over seeds:", "", "| model | " + " | ".join(focus_rows[0][1][0]["attention_focus"]) + " |",
                  "|---|" + "---|" * len(focus_rows[0][1][0]["attention_focus"])]
        for label, runs in focus_rows:
            gates = runs[0]["attention_focus"]
            lines.append(f"| {label} | " + " | ".join(
                format_interval([r["attention_focus"][g] for r in runs if g in r["attention_focus"]]) for g in gates)
                + " |")
        cost = [100 * r["attention_monitor_s"] / r["wall_s"] for _, runs in focus_rows for r in runs
                if r.get("attention_monitor_s") and r["wall_s"] > 0]
        if cost:
            lines += ["", f"monitoring cost: {format_pm(mean_std(cost))}% of the training time"]
    failed = sum(not r["learned"] for runs in rows.values() for r in runs)
    lines += ["", f"\\* did not learn ({failed} runs): left out of the means with its pair."] if failed else [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=(*TASKS, "all"), default="classification")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--rows", nargs="+", default=None,
                   help="classification: only these rows (labels as printed) besides the baseline")
    p.add_argument("--out", default="runs/accuracy", help="run folders (default runs/accuracy)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the trainer's choice)")
    p.add_argument("--json", default=None, help="also write every number to this file")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="change a training setting in every row, baseline included (e.g. lr=0.05); "
                        "a TDAF setting (attention_init=random) changes the TDAF rows only")
    args = p.parse_args(argv)
    settings = parse_settings(args.set)
    if args.seeds < 2:
        p.error("--seeds: an interval needs >= 2")
    logging.basicConfig(level=logging.WARNING)
    tasks = TASKS if args.task == "all" else (args.task,)
    start = time.perf_counter()
    results = []
    for task in tasks:
        res = run_task(task, args.seeds, Path(args.out), args.threads, args.rows, settings)
        results.append(res)
        print(report(res), flush=True)
    print(f"\ntotal {(time.perf_counter() - start) / 60:.1f} min, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if args.json:
        atomic_write_text(json.dumps(json_safe(results), indent=2), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
