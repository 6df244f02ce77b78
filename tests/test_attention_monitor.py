"""Attention monitoring: the statistics are exact on gates set by hand, the ablation replaces
what it says, and monitoring a run changes none of its results."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from tdaf.cli.main import main
from tdaf.attention_stats import attention_ablation, boxes_to_regions, gate_statistics
from tdaf.engine.monitor import attention_line, checkpoint_attention_stats, gradient_norms
from tdaf.engine.options import EvalOptions
from tdaf.engine.trainer import train
from tdaf.r2dns import R2DNS


def _quadrants(size: int = 8) -> torch.Tensor:
    """Two gates: image 0 at 0.9 on its top-left quadrant, image 1 on its bottom-right, 0.1 elsewhere."""
    g = torch.full((2, 1, size, size), 0.1)
    h = size // 2
    g[0, 0, :h, :h] = 0.9
    g[1, 0, h:, h:] = 0.9
    return g


def test_regions_from_boxes_mark_inside_outside_and_padding() -> None:
    r = boxes_to_regions([[[1, 2, 3.5, 4]], []], (6, 6), valid=[(6, 6), (4, 5)])
    assert r.dtype == torch.int8 and r.shape == (2, 6, 6)
    assert r[0, 2:4, 1:4].eq(1).all() and r[0].eq(1).sum() == 6  # columns 1..3 (3.5 rounds out), rows 2..3
    assert r[1, 4:].eq(-1).all() and r[1, :, 5:].eq(-1).all() and r[1, :4, :5].eq(0).all()


def test_gate_statistics_are_exact_on_known_maps() -> None:
    g = _quadrants()
    # each image's object where its gate is high, in an input frame twice the gate's size
    regions = boxes_to_regions([[[0, 0, 8, 8]], [[8, 8, 16, 16]]], (16, 16))
    stats = gate_statistics({(1, 2): g}, eta=0.5, start={(1, 2): torch.full_like(g, 0.5)}, regions=regions)
    assert stats["s1f2_mean"] == pytest.approx(0.3)
    assert stats["s1f2_std"] == pytest.approx(math.sqrt(0.25 * 0.6**2 + 0.75 * 0.2**2))
    assert stats["s1f2_p5"] == pytest.approx(0.1) and stats["s1f2_p95"] == pytest.approx(0.9)
    assert stats["s1f2_moved"] == pytest.approx(0.4)
    # the bilinear resize to 16x16 keeps every value inside the quadrants but the one-pixel seams
    full = torch.nn.functional.interpolate(g, size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    inside, outside = full[regions == 1].mean().item(), full[regions == 0].mean().item()
    assert stats["s1f2_focus"] == pytest.approx(inside / outside)
    assert stats["s1f2_focus"] > 5
    assert stats["s1f2_focus_applied"] == pytest.approx((inside + 0.5) / (outside + 0.5))


def test_without_regions_or_start_focus_and_moved_are_nan() -> None:
    stats = gate_statistics({(2, 3): _quadrants()}, eta=0.5)
    assert math.isnan(stats["s2f3_focus"]) and math.isnan(stats["s2f3_moved"])
    assert "focus -" in attention_line({f"attn_{k}": v for k, v in stats.items()})


def _tiny_r2dns(gate: torch.Tensor) -> R2DNS:
    """Two stride-2 conv stages, 2 flows: one gate (stage 1 of flow 2, 16x16 on a 32x32 input)
    whose map is ``gate`` whatever the input."""
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU()),
              nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())]
    r = R2DNS(stages, [4, 8], [2, 2], flows=2).eval()
    r.attention[0].forward = lambda x: gate[: x.shape[0]]  # type: ignore[method-assign]
    return r


def test_ablation_replaces_gates_by_the_average_map_and_by_a_constant() -> None:
    g = _quadrants(16)
    r = _tiny_r2dns(g)
    x = torch.randn(2, 3, 32, 32)
    box = boxes_to_regions([[[0, 0, 8, 8]]], (16, 16))

    def metric() -> float:  # image 0's focus on its own top-left quadrant, from the gate applied
        with r.record_attention() as maps:
            r(x)
        return gate_statistics({(1, 2): maps[(1, 2)][:1]}, 0.5, regions=box)["s1f2_focus"]

    result = attention_ablation(r, metric)
    assert result["trained"] == pytest.approx(9.0)
    # average map: 0.5 on both quadrants, 0.1 elsewhere (its mean 0.3 is each image's own mean)
    assert result["average_map"] == pytest.approx(0.5 / ((64 * 0.5 + 128 * 0.1) / 192))
    assert result["constant"] == pytest.approx(1.0)
    assert result["constant_drop"] == pytest.approx(8.0)
    with r.record_attention() as maps:  # the model is left as it was
        r(x)
    assert torch.equal(maps[(1, 2)], g)


def test_gradient_norms_restore_the_model_and_see_identity_flows() -> None:
    from tdaf import create_model
    from tdaf.classification.task import ClassificationTask

    torch.manual_seed(0)
    model = create_model("tdaf_resnet18_cifar", num_classes=3, flows=3, attention_init="identity").eval()
    r2dns = next(m for m in model.modules() if isinstance(m, R2DNS))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    rng = torch.get_rng_state()
    norms = gradient_norms(ClassificationTask(), model, r2dns, x, y)
    assert set(norms) == {"grad_flow1", "grad_flow2", "grad_flow3", "grad_anar1", "grad_anar2", "grad_anar3"}
    # identity start: the last convs of the ANARs are zero, so nothing reaches flows 1 and 2
    assert norms["grad_flow1"] == 0.0 and norms["grad_flow2"] == 0.0 and norms["grad_flow3"] > 0
    assert norms["grad_anar1"] > 0  # ... but the ANARs' last convs do learn
    assert not model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def _run(tmp_path, name: str, **extra):
    cfg = dict(task="classification", model="tdaf_resnet18_w32", data="cluttered_digits", train_subset=24,
               val_subset=16, epochs=2, batch_size=8, lr=0.05, lr_batch=8, workers=0, progress=False,
               tensorboard=False, out=str(tmp_path / name))
    return train({**cfg, **extra})


def test_monitoring_changes_no_training_result_and_logs_every_gate(tmp_path, capsys) -> None:
    watched = _run(tmp_path, "watched")
    plain = _run(tmp_path, "unwatched", attention_monitor=False)
    a = torch.load(watched["last"], weights_only=True)
    b = torch.load(plain["last"], weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    with open(watched["out"] / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    gates = ("s1f2", "s1f3", "s2f2", "s2f3", "s3f3")
    for g in gates:
        for stat in ("mean", "std", "p5", "p95", "moved", "focus", "focus_applied"):
            assert math.isfinite(float(rows[-1][f"attn_{g}_{stat}"])), (g, stat)
    assert float(rows[-1]["grad_flow3"]) > 0 and "attn_monitor_s" in rows[-1]
    assert set(a["attention_start"]) == set(gates)
    with open(plain["out"] / "metrics.csv") as f:
        assert not [k for k in next(csv.DictReader(f)) if k.startswith(("attn_", "grad_"))]
    # the checkpoint's statistics on the same subset: moved from the start the run recorded
    stats = checkpoint_attention_stats(watched["last"], EvalOptions(progress=False, subset=16), count=16,
                                       ablation=False)
    assert stats["regions"] and stats["gates"]["s1f3"]["focus"] == pytest.approx(float(rows[-1]["attn_s1f3_focus"]),
                                                                                  rel=1e-5)
    # ... and the command line's: the same numbers as JSON, and as a table with the ablation
    flags = ["attention", "--checkpoint", str(watched["last"]), "--stats", "--subset", "16", "--count", "16"]
    capsys.readouterr()
    assert main([*flags, "--no-ablation", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["gates"]["s1f3"]["focus"] == pytest.approx(stats["gates"]["s1f3"]["focus"])
    assert set(printed["gates"]) == set(gates) and "ablation" not in printed
    assert main([*flags, "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert all(g in table for g in gates) and "average map" in table and "top1 as trained" in table
    for argv, message in ((["--model", "tdaf_resnet18_w32", "--stats"], "--stats: needs --checkpoint"),
                          (["--checkpoint", str(watched["last"]), "x.png", "--out", str(tmp_path), "--json"],
                           "--json: only with --stats")):
        assert main(["attention", *argv]) != 0
        assert capsys.readouterr().err.startswith(f"tdaf attention: error: {message}")


def test_tensorboard_gets_the_attention_pictures(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(tmp_path, "tb", epochs=1, tensorboard=True)
    acc = EventAccumulator(str(result["out"] / "tb"))
    acc.Reload()
    assert "attention/maps" in acc.Tags()["images"]
    assert "attn/s1f2_focus" in acc.Tags()["scalars"]


def test_without_tensorboard_one_warning_and_the_csv(tmp_path, monkeypatch, caplog) -> None:
    from tdaf.engine import runlog
    from tdaf.io.optional import MissingDependency

    def missing(*args, **kwargs):
        raise MissingDependency("TensorBoard logging needs the tb extra")

    monkeypatch.setattr(runlog, "require", missing)
    with caplog.at_level("WARNING", logger="tdaf.train"):
        result = _run(tmp_path, "notb", epochs=1, tensorboard=True)
    assert [r for r in caplog.records if "metrics.csv only" in r.getMessage()].__len__() == 1
    assert not (result["out"] / "tb").exists()
    assert "attn_s1f2_focus" in (result["out"] / "metrics.csv").read_text()
