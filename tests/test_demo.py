"""The main job's statistics and the demo end to end: per-seed results, means, the paired
interval, a verdict the interval supports, and runs that did not learn counted."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from tdaf.cli.demo import compare, format_seed_table, learned, save_curves, seed_list
from tdaf.cli.main import main
from tdaf.evidence import (
    bootstrap_paired, format_interval, mean_interval, mean_std, paired_difference, t_quantile, verdict,
)


def test_paired_interval_by_formula():
    a, b = [80.0, 82.0, 84.0], [81.0, 84.0, 84.0]  # diffs 1, 2, 0: mean 1, std 1
    d = paired_difference(a, b)
    assert d.diffs == (1.0, 2.0, 0.0) and d.mean == 1.0 and d.std == pytest.approx(1.0)
    half = 4.303 / math.sqrt(3)
    assert (d.low, d.high) == pytest.approx((1 - half, 1 + half))
    assert verdict(d).startswith("within noise") and "contains 0" in verdict(d)
    better = paired_difference([80, 81, 82, 80], [83, 84, 84, 83.5])
    assert better.low > 0 and verdict(better).startswith("TDAF is better")
    worse = paired_difference([83, 84, 84, 83.5], [80, 81, 82, 80])
    assert worse.high < 0 and verdict(worse).startswith("TDAF is worse")
    assert "no interval" in verdict(paired_difference([1.0], [2.0]))
    assert t_quantile(2) == 4.303 and abs(t_quantile(40) - 2.021) < 0.002
    with pytest.raises(ValueError, match="pairs need equal counts"):
        paired_difference([1.0], [1.0, 2.0])
    assert mean_std([]).n == 0
    m = mean_interval([1.0, 2.0, 0.0, math.nan])  # the diffs above: the same interval, the NaN left out
    assert m.n == 3 and (m.mean, m.low, m.high) == pytest.approx((1.0, 1 - half, 1 + half))
    assert format_interval([1.0, 2.0, 0.0]) == f"1.00 [{1 - half:.2f}, {1 + half:.2f}]"
    assert format_interval([0.5], sign=True) == "+0.50 (n=1)" and format_interval([]) == "-"


def test_bootstrap_over_test_images():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 2000)) < 0.8).astype(np.uint8)
    same = bootstrap_paired(a, a)
    assert same == (0.0, 0.0, 0.0)
    b = a.copy()
    b[:, :200] = 1  # b fixes some of a's errors: a positive difference, interval above 0
    mean, low, high = bootstrap_paired(a, b)
    assert mean == pytest.approx((b.mean(0) - a.mean(0)).mean()) and 0 < low < mean < high


def _run(model, seed, top1, loss=0.5, n=100):
    correct = np.zeros(n, np.uint8)
    correct[: round(top1 * n)] = 1
    hist = [{"epoch": e + 1, "train_loss": loss * (2 - e), "val_top1": top1 - 0.05 * (1 - e)} for e in range(2)]
    return {"model": model, "seed": seed, "flows": "-" if model == "resnet18" else 3,
            "anar": "-" if model == "resnet18" else "anar3", "top1": top1, "train_loss": loss, "learned": learned(loss, 10),
            "train_s": 10.0, "epochs": 2, "history": hist, "correct": correct}


def test_compare_leaves_out_runs_that_did_not_learn(tmp_path):
    plain = [_run("resnet18", s, t) for s, t in enumerate((0.80, 0.82, 0.84))]
    tdaf = [_run("tdaf_resnet18", 0, 0.10, loss=2.30), _run("tdaf_resnet18", 1, 0.85), _run("tdaf_resnet18", 2, 0.86)]
    report = compare(plain, tdaf)
    assert report["seeds_used"] == [1, 2] and report["did_not_learn"] == ["tdaf_resnet18 seed 0"]
    assert report["diff_mean"] == pytest.approx(2.5) and report["plain_mean"] == pytest.approx(83.0)
    assert "1 of 6 runs did not learn" in report["verdict_line"]
    table = format_seed_table(plain, tdaf)
    assert "10.00 (did not learn)" in table and "+3.00" in table
    png = save_curves(plain, tdaf, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seeds", "3-4", "--epochs", "1", "--train-subset", "24",
                 "--val-subset", "20", "--batch-size", "8"]) == 0  # progress as make demo runs it: the default
    text = capsys.readouterr().out
    assert "verdict:" in text and "Top-1 mean ± std" in text and "Focus [95%]" in text
    assert "by its average map over images" in text and "over 2 seeds" in text
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["model"], r["seed"]) for r in summary["runs"]] == [
        ("resnet18_w32", 3), ("tdaf_resnet18_w32", 3), ("resnet18_w32", 4), ("tdaf_resnet18_w32", 4)]
    attention = summary["attention"]
    assert summary["recipe"]["data"] == "cluttered_digits" and set(attention["gates"]) == {
        "s1f2", "s1f3", "s2f2", "s2f3", "s3f3"}
    focus = attention["gates"]["s2f3"]["focus"]  # the mean of the seeds' own statistics
    per_run = [r["attention"]["gates"]["s2f3"]["focus"] for r in summary["runs"] if "attention" in r]
    assert focus["per_seed"] == pytest.approx(per_run) and focus["mean"] == pytest.approx(sum(per_run) / 2)
    assert len(attention["ablation_drop_points"]["constant"]["per_seed"]) == 2
    for r in summary["runs"]:
        assert 0 <= r["top1"] <= 1 and (out / f"{r['model']}_seed{r['seed']}" / "last.pt").exists()
    assert (out / "summary.csv").read_text().count("\n") == 5
    assert len(list((out / "attention").glob("*.png"))) == 4 and (out / "curves.png").exists()
    # a second demo into the same folder replaces nothing without --overwrite, and says so before training
    before = (out / "summary.json").read_bytes()
    assert main(["demo", "--out", str(out), "--seeds", "3-4", "--epochs", "1", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "summary.json").read_bytes() == before


def test_seeds_are_a_count_a_range_or_a_list(capsys):
    assert seed_list("4") == [0, 1, 2, 3] and seed_list("100-103") == [100, 101, 102, 103]
    assert seed_list("7,3") == [7, 3]
    for bad in ("0", "5-2", "1,1", "x", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="allowed: N >= 1"):
            seed_list(bad)
    with pytest.raises(SystemExit):
        main(["demo", "--seeds", "5-2"])
    assert "argument --seeds: got '5-2'" in capsys.readouterr().err


def test_accuracy_benchmark_report():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(value, ok=True, focus=None):
        r = {"metric": "top1", "value": value, "train_loss": 0.5, "learned": ok, "wall_s": 60.0}
        return r if focus is None else {**r, "attention_focus": {"s1f3": focus, "s2f3": 1.0},
                                        "attention_monitor_s": 1.2}

    res = {"task": "classification", "seeds": 3, "rows": {
        "resnet18": [row(0.80), row(0.82), row(0.84)],
        "tdaf_resnet18": [row(0.84, focus=1.5), row(0.86, focus=1.7), row(0.88, focus=1.6)],
        "tdaf_resnet18 anar3 random": [row(0.10, ok=False), row(0.83), row(0.83)],
    }}
    text = bench.report(res)
    assert "| tdaf_resnet18 | 84.00, 86.00, 88.00 | 86.00 ± 2.00 | +4.00 [+4.00, +4.00] | tdaf_resnet18 is better" in text
    assert "10.00*" in text and "did not learn (1 runs)" in text
    assert "| model | s1f3 | s2f3 |" in text and "| tdaf_resnet18 | 1.60 [1.35, 1.85] | 1.00 [1.00, 1.00] |" in text
    assert "monitoring cost: 2.00 ± 0.00% of the training time" in text
    assert [label for label, _ in bench.rows_for("classification")][:2] == ["resnet18_w32", "tdaf_resnet18_w32"]
    # --set changes a setting of every row: typed values, refused keys, named in the table's title
    assert bench.parse_settings(["lr=0.05", "clip_grad_norm=null", "nesterov=false"]) == {
        "lr": 0.05, "clip_grad_norm": None, "nesterov": False}
    for bad in (["lr"], ["learning_rate=0.1"], ["model=resnet18"]):
        with pytest.raises(SystemExit, match="--set"):
            bench.parse_settings(bad)
    assert "(3 seeds, final-epoch top1, %, lr=0.05)" in bench.report({**res, "settings": {"lr": 0.05}})
