"""Training and evaluation: CLI, exact resume, atomic checkpoints, NaN stop, configs, schedules."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from tdaf.cli.main import main
from tdaf.cli.train import config_from_args
from tdaf.engine.checkpoint import load_checkpoint, model_from_checkpoint
from tdaf.engine.config import TrainConfig, load_config_file
from tdaf.classification import ClassificationTask
from tdaf import create_model
from tdaf.engine.trainer import Trainer, lr_at, seed_everything



CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# A tiny but real run: ResNet-18 (CIFAR stem) on 16 digits at their native 8x8, 2 steps of 8 per epoch.
TINY = dict(model="resnet18_cifar", data="digits", input_size=8, train_subset=16, val_subset=16, batch_size=8,
            lr=0.01, lr_batch=16, epochs=2, seed=0, progress=False, tensorboard=False)


def _cfg(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "out": str(tmp_path / name), **kw})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_train_then_eval_beats_chance(tmp_path, capsys):
    out = tmp_path / "d"
    # 32 steps of 8 digits at their native 8x8: enough to beat chance by far (measured: 38% on 200 images)
    code = main(["train", "--data", "digits", "--model", "resnet18_cifar", "--epochs", "1", "--batch-size", "8",
                 "--lr", "0.001", "--lr-batch", "8", "--schedule", "constant", "--input-size", "8",
                 "--train-subset", "256", "--val-subset", "64", "--seed", "0", "--out", str(out), "--no-progress"])
    assert code == 0
    for name in ("last.pt", "best.pt", "metrics.csv", "config.yaml"):
        assert (out / name).is_file(), name
    assert any((out / "tb").glob("events.out.tfevents.*"))
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss") and len(rows) == 2
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", "digits", "--subset", "200", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert result["images"] == 200 and result["skipped"] == 0
    assert result["top1"] > 0.2, result  # chance is 0.1 (10 balanced classes)
    # everything loads with weights_only=True and rebuilds the model with the meta predict/export read
    ckpt = torch.load(out / "best.pt", weights_only=True)
    meta = ckpt["meta"]
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["input_size"] == [3, 8, 8]
    assert meta["resize"] is None and meta["data"] == "digits" and meta["epoch"] == 1
    assert meta["metrics"]["top1"] == pytest.approx(ckpt["history"][-1]["val_top1"])
    assert {"optimizer", "rng", "config", "scheduler"} <= set(ckpt)
    model, _ = model_from_checkpoint(out / "best.pt")
    assert not model.training and model.num_classes == 10


class Preempted(Exception):
    """Stands for the job being killed mid-epoch."""


class _StopAt(ClassificationTask):
    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.calls, self.at_call = 0, at_call

    def training_step(self, model, inputs, targets):
        self.calls += 1
        if self.calls == self.at_call:
            raise Preempted
        return super().training_step(model, inputs, targets)


def test_resume_is_exact(tmp_path):
    tdaf = dict(model="tdaf_resnet18_cifar")  # MFBN's per-flow statistics must resume too
    full = Trainer(_cfg(tmp_path, "full", **tdaf)).fit()
    # killed in epoch 2, step 1: only epoch 1's checkpoint exists. Call 4: epoch 1's two steps and
    # the attention monitor's one gradient probe at its end come first
    with pytest.raises(Preempted):
        Trainer(_cfg(tmp_path, "cut", **tdaf), task=_StopAt(4)).fit()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    # resume from the command line, as a user would: same flags plus --resume (--out defaults to its folder)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **tdaf}.items() if k not in ("progress", "tensorboard")]
    assert main(["train", *flags, "--no-progress", "--no-tensorboard",
                 "--resume", str(tmp_path / "cut" / "last.pt")]) == 0
    a = load_checkpoint(full["last"])
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert [h["train_loss"] for h in full["history"]] == [h["train_loss"] for h in b["history"]]
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    # and it trained: the weights moved away from the (seeded) initialisation
    seed_everything(0)
    init = create_model("tdaf_resnet18_cifar", num_classes=10).state_dict()
    assert not torch.allclose(init["head.fc.weight"], a["state_dict"]["head.fc.weight"])


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 wrote last.pt and best.pt; epoch 2's last.pt dies half-written
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        Trainer(_cfg(tmp_path, "a", epochs=2, train_subset=8)).fit()
    monkeypatch.setattr(torch, "save", real_save)
    out = tmp_path / "a"
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1
    model, meta = model_from_checkpoint(out / "last.pt")
    assert meta["epoch"] == 1
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tmp" or p.name.startswith(".")) == []


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    seen: dict[str, str] = {}
    real_step = ClassificationTask.training_step
    calls = {"n": 0}

    def training_step(self, model, inputs, targets):
        calls["n"] += 1
        result = real_step(self, model, inputs, targets)
        if calls["n"] == 2:  # epoch 2, step 1 (one step per epoch)
            seen["last"], seen["best"] = _sha(out / "last.pt"), _sha(out / "best.pt")
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(ClassificationTask, "training_step", training_step)
    code = main(["train", "--model", "resnet18_cifar", "--input-size", "8", "--train-subset", "8",
                 "--val-subset", "8", "--batch-size", "8", "--epochs", "3", "--out", str(out),
                 "--no-progress", "--no-tensorboard"])
    err = capsys.readouterr().err
    assert code == 1
    assert "tdaf train: error: training loss is nan at epoch 2, step 1/1" in err
    assert f"last good checkpoint {out / 'last.pt'} (epoch 1) is kept" in err
    assert "Traceback" not in err
    assert _sha(out / "last.pt") == seen["last"] and _sha(out / "best.pt") == seen["best"]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    cases = [
        (["train", "--data", "cifar10", "--data-dir", str(tmp_path / "nowhere")],
         "does not exist; expected the CIFAR-10 python layout"),
        (["train", "--data", "imagefolder", "--data-dir", str(tmp_path)], "has no 'train' folder"),
        (["train", "--model", "resnet19_cifar"], "unknown name 'resnet19_cifar'"),
        (["train", "--batch-size", "30", "--accum-steps", "4"], "batch_size: got 30; allowed: a multiple of"),
        (["train", "--resume", str(tmp_path / "missing.pt")], "--resume: file not found"),
        (["train", "--config", str(tmp_path / "none.yaml")], "--config: file not found"),
        (["train", "--model", "resnet18_cifar", "--flows", "3"], "only TDAF models take these"),
        (["eval", "--checkpoint", str(tmp_path / "x.pt")], "--checkpoint: file not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tdaf {argv[0]}: error: ") and message in err, (argv, err)
        assert len(err.splitlines()) == 1


def test_an_out_folder_with_a_checkpoint_is_not_overwritten_silently(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "last.pt").write_bytes(b"precious")
    with pytest.raises(ValueError, match="already holds a checkpoint.*--resume.*--overwrite"):
        Trainer(_cfg(tmp_path, "old", epochs=1)).fit()
    assert (tmp_path / "old" / "last.pt").read_bytes() == b"precious"


def test_config_files_merge_and_validate(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 7\nbatch-size: 32\nlr: 0.2\nweight_decay: 5e-4\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nmodel: tdaf_resnet18_cifar\nflows: 2\nlr: 0.3\n")

    cfg = config_from_args(argparse.Namespace(config=str(tmp_path / "run.yaml"), lr=0.4))  # a flag beats the file
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.flows, cfg.model) == (7, 32, 0.4, 2, "tdaf_resnet18_cifar")
    assert cfg.weight_decay == 5e-4  # YAML reads 5e-4 as a string; it is still a number
    (tmp_path / "typo.yaml").write_text("epoch: 3\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown key 'epoch' \(did you mean epochs"):
        config_from_args(argparse.Namespace(config=str(tmp_path / "typo.yaml")))
    with pytest.raises(ValueError, match="lr: got 'fast' \\(str\\); allowed: float"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(ValueError, match="milestones: got \\[5, 50\\]"):
        TrainConfig.from_dict({"epochs": 10, "milestones": [5, 50]})
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config_file(tmp_path / "loop.yaml")


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("[!_]*.yaml")), ids=str)
def test_every_paper_config_validates(path):
    values = load_config_file(CONFIGS / path)
    cfg = TrainConfig.from_dict(values, path)
    base = {"tab2": "_cifar10_recipe", "tab3a": "_imagenet_recipe", "digits": "_digits_recipe",
            "cluttered": "_cluttered_recipe"}[path.split("_")[0]]
    recipe = load_config_file(CONFIGS / f"{base}.yaml")  # a baseline and its TDAF model differ only in the model
    assert {k: v for k, v in values.items() if k in recipe} == recipe
    assert set(values) - set(recipe) <= {"model", "flows", "anar", "attention_init", "out"}
    assert cfg.model.startswith("tdaf_") == (cfg.flows is not None)
    if base == "_cluttered_recipe":  # the files say what tdaf demo runs
        from tdaf.cli.demo import DEMO_RECIPE

        assert recipe == DEMO_RECIPE


def test_paper_schedules():
    imagenet = TrainConfig.from_dict(load_config_file(CONFIGS / "tab3a_imagenet_resnet50.yaml"))
    steps = 5004  # 1.28M images / 256
    assert lr_at(imagenet, 0, steps) == pytest.approx(0.1)
    assert lr_at(imagenet, 30 * steps - 1, steps) == pytest.approx(0.1)
    assert lr_at(imagenet, 30 * steps, steps) == pytest.approx(0.01)
    assert lr_at(imagenet, 89 * steps, steps) == pytest.approx(0.001)
    assert imagenet.merged({"batch_size": 1024}).base_lr == pytest.approx(0.4)  # 0.1 x batch/256
    cifar = TrainConfig.from_dict(load_config_file(CONFIGS / "tab2_cifar10_resnet50.yaml"))
    assert cifar.base_lr == pytest.approx(0.1) and cifar.step_milestones() == [82, 123]
    cos = TrainConfig.from_dict({"epochs": 4, "schedule": "cosine", "warmup_epochs": 1, "lr": 0.1, "lr_batch": 64})
    assert lr_at(cos, 0, 10) == pytest.approx(0.01) and lr_at(cos, 9, 10) == pytest.approx(0.1)
    assert lr_at(cos, 10, 10) == pytest.approx(0.1) and lr_at(cos, 39, 10) < 0.001
    assert math.isclose(lr_at(cos, 25, 10), 0.05)


def test_train_from_cifar_and_imagefolder_folders(tmp_path, capsys, caplog):
    from test_data import _write_cifar, _write_imagefolder

    _write_cifar(tmp_path / "c", per_batch=4)
    common = ["--model", "resnet18_cifar", "--epochs", "1", "--batch-size", "4", "--input-size", "8",
              "--workers", "0", "--no-progress", "--no-tensorboard"]
    assert main(["train", "--data", "cifar10", "--data-dir", str(tmp_path / "c"), *common,
                 "--out", str(tmp_path / "cifar")]) == 0
    meta = load_checkpoint(tmp_path / "cifar" / "last.pt")["meta"]
    assert meta["class_names"][:2] == ["airplane", "automobile"] and meta["resize"] is None
    assert meta["metrics"]["images"] == 4  # the 4 images of test_batch

    _write_imagefolder(tmp_path / "f", broken=True)  # 7 training files, one of them unreadable
    with caplog.at_level("WARNING", logger="tdaf.train"):
        assert main(["train", "--data", "imagefolder", "--data-dir", str(tmp_path / "f"), *common,
                     "--batch-size", "7", "--out", str(tmp_path / "folder")]) == 0
    assert "skipped 1 unreadable training images (e.g." in caplog.text and "broken.jpg" in caplog.text
    ckpt = load_checkpoint(tmp_path / "folder" / "last.pt")
    assert ckpt["meta"]["class_names"] == ["cat", "dog"] and ckpt["meta"]["resize"] == 9  # 8 x 256/224
    assert ckpt["history"][-1]["skipped"] == 1
    capsys.readouterr()
    assert main(["train", "--data", "imagefolder", "--data-dir", str(tmp_path / "f"), *common, "--batch-size", "7",
                 "--strict", "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert "tdaf train: error: unreadable input" in err and "broken.jpg (" in err and "--strict" in err


def test_ema_weights_are_validated_saved_and_resumed_exactly(tmp_path):
    ema = dict(ema_decay=0.5, schedule="constant")
    full = Trainer(_cfg(tmp_path, "full", epochs=2, **ema)).fit()
    ckpt = load_checkpoint(full["last"])
    raw, avg = ckpt["train_state_dict"], ckpt["state_dict"]
    assert set(raw) == set(avg) and not torch.equal(raw["head.fc.weight"], avg["head.fc.weight"])
    model, meta = model_from_checkpoint(full["last"])  # the EMA weights are the model
    assert torch.equal(model.state_dict()["head.fc.weight"], avg["head.fc.weight"])
    Trainer(_cfg(tmp_path, "cut", epochs=1, **ema)).fit()
    Trainer(_cfg(tmp_path, "cut", epochs=2, resume=str(tmp_path / "cut" / "last.pt"), **ema)).fit()
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in ("state_dict", "train_state_dict"):
        assert all(torch.equal(v, b[key][k]) for k, v in ckpt[key].items()), key
    with pytest.raises(ValueError, match="trained with an EMA of the weights; give --ema-decay 0.5"):
        Trainer(_cfg(tmp_path, "cut", epochs=3, resume=str(tmp_path / "cut" / "last.pt"))).fit()


def test_fp16_autocast_scales_the_loss(tmp_path, monkeypatch):
    scaled = []
    real = torch.amp.GradScaler.scale

    def scale(self, outputs):
        scaled.append(self.is_enabled())
        return real(self, outputs)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", scale)
    result = Trainer(_cfg(tmp_path, "fp16", epochs=1, train_subset=8, batch_size=8, amp=True, amp_dtype="fp16",
                          model="resnet18_cifar")).fit()
    assert scaled == [True] and "scaler" in load_checkpoint(result["last"])
    assert math.isfinite(result["history"][-1]["train_loss"])
