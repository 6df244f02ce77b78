"""Nothing lost, ever: divergence, kills, signals and clumsy paths never cost a good checkpoint.

Kills are simulated by raising inside the save path (or by leaving what ``kill -9`` leaves),
divergence by a huge learning rate or by corrupting a statistic on a tiny subset.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from _hostile import classification_checkpoint as _checkpoint
from _hostile import sha as _sha

import tdaf
import tdaf.engine.trainer as trainer_mod
from tdaf.classification import ClassificationTask
from tdaf.cli.main import main
from tdaf.engine.checkpoint import load_checkpoint, model_from_checkpoint
from tdaf.engine.config import TrainConfig
from tdaf.engine.trainer import Trainer, TrainingDiverged
from tdaf.io.files import safe_load

TINY = dict(model="resnet18_cifar", data="digits", input_size=8, train_subset=16, val_subset=16, batch_size=8,
            lr=0.01, lr_batch=16, epochs=2, seed=0, progress=False, tensorboard=False)
FLAGS = ["--model", "resnet18_cifar", "--input-size", "8", "--train-subset", "16", "--val-subset", "16",
         "--batch-size", "8", "--lr", "0.01", "--lr-batch", "16", "--no-progress", "--no-tensorboard"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``except Exception``)."""


def _cfg(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "out": str(tmp_path / name), **kw})


def _csv_rows(out: Path) -> list[str]:
    return (out / "metrics.csv").read_text().splitlines()


class _AlwaysBest(ClassificationTask):
    """Every validated epoch counts as a new best, so best.pt is written every epoch."""

    def better(self, value, best):
        return True


# ------------------------------------------------------------------ divergence

def test_nonfinite_hyperparameters_are_refused_up_front(tmp_path, capsys):
    for flag, value in (("--lr", "inf"), ("--weight-decay", "nan"), ("--momentum", "nan")):
        assert main(["train", *FLAGS, flag, value, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert f"{flag[2:].replace('-', '_')}: got" in err and "a finite number" in err, err
    assert not (tmp_path / "x" / "last.pt").exists()


def test_a_diverged_statistic_stops_the_run_before_saving(tmp_path):
    good = Trainer(_cfg(tmp_path, "r", epochs=1)).fit()
    before = {n: _sha(good["out"] / n) for n in ("last.pt", "best.pt", "metrics.csv")}

    class _Corrupting(ClassificationTask):
        def training_step(self, model, inputs, targets):
            result = super().training_step(model, inputs, targets)
            # what --lr 1e6 does to BatchNorm statistics while the loss still looks finite
            model.backbone.stages[1][0].bn1.running_var.data.fill_(float("inf"))
            return result

    cfg = _cfg(tmp_path, "r", epochs=2, resume=str(good["out"] / "last.pt"))
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 2: 1 buffers .*running_var.*Stopped before "
                                               r"saving epoch 2; the last good checkpoint .*last.pt \(epoch 1\)"):
        Trainer(cfg, task=_Corrupting()).fit()
    assert {n: _sha(good["out"] / n) for n in before} == before


def test_resuming_with_a_huge_lr_exits_nonzero_and_keeps_the_good_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--epochs", "1", "--out", str(out)]) == 0
    before = {n: _sha(out / n) for n in ("last.pt", "best.pt", "metrics.csv")}
    capsys.readouterr()
    code = main(["train", "--resume", str(out / "last.pt"), "--epochs", "3", "--lr", "1e6", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "tdaf train: error:" in err and ("epoch 2" in err) and "last.pt (epoch 1) is kept" in err, err
    assert {n: _sha(out / n) for n in before} == before


# ------------------------------------------------------------------ kills

def test_kill_between_best_and_last_then_resume_loses_nothing(tmp_path, monkeypatch):
    full = Trainer(_cfg(tmp_path, "full", epochs=3), task=_AlwaysBest()).fit()
    real = trainer_mod.atomic_save

    def dying_save(payload, path):
        if Path(path).name == "last.pt" and payload["epoch"] == 2:  # best.pt of epoch 2 is already written
            raise Killed
        return real(payload, path)

    monkeypatch.setattr(trainer_mod, "atomic_save", dying_save)
    out = tmp_path / "cut"
    with pytest.raises(Killed):
        Trainer(_cfg(tmp_path, "cut", epochs=3), task=_AlwaysBest()).fit()
    monkeypatch.setattr(trainer_mod, "atomic_save", real)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "best.pt")["epoch"] == 2  # ahead of last.pt: resuming redoes epoch 2
    assert len(_csv_rows(out)) == 2  # header + epoch 1
    (out / ".last.pt.abcd1234.tmp").write_bytes(b"x" * 1000)  # what SIGKILL leaves behind mid-save
    Trainer(_cfg(tmp_path, "cut", epochs=3, resume=str(out / "last.pt")), task=_AlwaysBest()).fit()
    assert not list(out.glob(".*.tmp"))
    a, b = load_checkpoint(full["last"]), load_checkpoint(out / "last.pt")
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    assert load_checkpoint(out / "best.pt")["epoch"] == 3
    rows_full, rows_cut = _csv_rows(full["out"]), _csv_rows(out)
    assert len(rows_cut) == 4 and rows_cut[0] == rows_full[0]
    strip = lambda row: row.split(",")[:5]  # noqa: E731  (epoch, lr, losses, accuracies; not the timings)
    assert [strip(r) for r in rows_cut] == [strip(r) for r in rows_full]


def test_kill_while_writing_best_then_resume_writes_best(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def dying(obj, f, *args, **kwargs):
        calls["n"] += 1
        if isinstance(obj, dict) and obj.get("epoch") == 2:  # epoch 2's best.pt, the first file it writes
            f.write(b"PK half")
            raise Killed
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying)
    out = tmp_path / "b"
    with pytest.raises(Killed):
        Trainer(_cfg(tmp_path, "b"), task=_AlwaysBest()).fit()
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out / "best.pt")["epoch"] == 1 and load_checkpoint(out / "last.pt")["epoch"] == 1
    result = Trainer(_cfg(tmp_path, "b", resume=str(out / "last.pt")), task=_AlwaysBest()).fit()
    assert load_checkpoint(out / "best.pt")["epoch"] == 2 and result["best_epoch"] == 2
    assert len(_csv_rows(out)) == 3


def test_sigint_during_a_save_finishes_the_file_then_stops(tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while the checkpoint is being written
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    # as in a terminal: Ctrl-C raises KeyboardInterrupt (a background job may start with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    out = tmp_path / "i"
    try:
        code = main(["train", *FLAGS, "--epochs", "2", "--out", str(out)])
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert code == 130 and err.strip().endswith("tdaf train: interrupted") and "Traceback" not in err
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out / "best.pt")["epoch"] == 1  # written whole before the interrupt took effect
    assert not list(out.glob(".*.tmp"))


def test_sigterm_is_handled_like_sigint(tmp_path, monkeypatch, capsys):
    real_epoch = Trainer._train_epoch

    def terminated(self, model, epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends at the end of a job's time
        return real_epoch(self, model, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", terminated)
    out = tmp_path / "t"
    code = main(["train", *FLAGS, "--epochs", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 143 and "tdaf train: terminated (SIGTERM)" in err and "Traceback" not in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_an_interrupted_overwrite_leaves_no_old_checkpoint_beside_the_new_config(tmp_path):
    out = tmp_path / "o"
    Trainer(_cfg(tmp_path, "o", epochs=1)).fit()

    class _Dies(ClassificationTask):
        def training_step(self, model, inputs, targets):
            raise Killed

    with pytest.raises(Killed):
        Trainer(_cfg(tmp_path, "o", epochs=1, seed=5, overwrite=True), task=_Dies()).fit()
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists() and not (out / "metrics.csv").exists()
    assert "seed: 5" in (out / "config.yaml").read_text()


# ------------------------------------------------------------------ paths and files

def test_out_that_cannot_hold_a_run_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [
        (tmp_path / "file", "is a file, expected a folder"),
        (tmp_path / "file" / "below", "is a file, not a folder"),
        (Path("/proc/tdaf-test/run"), "cannot write in"),
    ]
    for out, message in cases:
        for argv in (["train", *FLAGS, "--out", str(out)],
                     ["attention", "--model", "tdaf_resnet18_cifar", str(tmp_path / "file"), "--out", str(out)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"tdaf {argv[0]}: error: --out: ") and message in err, (argv, err)
            assert len(err.splitlines()) == 1


def test_export_refuses_an_out_it_cannot_write_before_loading_anything(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file" / "m.ts", "is a file, expected a folder"),
                         (Path("/proc/tdaf-test/m.ts"), "cannot write in /proc/tdaf-test")):
        argv = ["export", "--model", "resnet18_cifar", "--format", "torchscript", "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tdaf export: error: --out: ") and message in err and len(err.splitlines()) == 1, err


def test_resume_into_an_unwritable_folder_fails_before_the_first_epoch(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    Trainer(_cfg(tmp_path, "r", epochs=1)).fit()
    epochs = []
    monkeypatch.setattr(Trainer, "_train_epoch", lambda self, m, e: epochs.append(e))
    code = main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--out", "/proc/tdaf-test/r"])
    assert code == 2 and "--out: cannot write in /proc/tdaf-test/r" in capsys.readouterr().err
    assert epochs == []


def test_checkpoint_files_that_are_not_checkpoints_get_one_true_line(tmp_path, capsys):
    empty, noise = tmp_path / "empty.pt", tmp_path / "noise.pt"
    empty.write_bytes(b"")
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=r"empty.pt is empty \(0 bytes\)"):
        safe_load(empty, "--checkpoint")
    with pytest.raises(ValueError, match="noise.pt is (truncated or )?not a PyTorch file") as e:
        safe_load(noise, "--checkpoint")
    assert "could run code" not in str(e.value)
    for path, message in ((empty, "is empty (0 bytes)"), (noise, "not a PyTorch file")):
        for argv in (["eval", "--checkpoint", str(path)], ["predict", "--checkpoint", str(path), str(path)],
                     ["train", "--resume", str(path)]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_eval_words_are_true(tmp_path, capsys):
    three = _checkpoint(tmp_path, "three.pt", num_classes=3)
    assert main(["eval", "--checkpoint", str(three), "--data", "digits", "--subset", "8"]) == 2
    assert "digits has 10 classes, but the checkpoint's model has 3 outputs" in capsys.readouterr().err

    model = tdaf.create_model("resnet18_cifar", num_classes=10)
    state = model.state_dict()
    state.pop("head.fc.bias")
    state["extra.weight"] = torch.zeros(1)
    broken = _checkpoint(tmp_path, "broken.pt", state=state)
    with pytest.raises(ValueError, match=r"weights do not fit resnet18_cifar .*missing keys: head.fc.bias; "
                                         r"unexpected keys: extra.weight"):
        model_from_checkpoint(broken)

    nan_state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()
                 if k != "extra.weight"}
    nan_state["head.fc.bias"] = torch.zeros(10)
    nan_ckpt = _checkpoint(tmp_path, "nan.pt", state=nan_state)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(nan_ckpt), "--data", "digits", "--subset", "8", "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    result = json.loads(out, parse_constant=refuse)
    assert result["loss"] is None and result["images"] == 8


def test_export_never_overwrites_without_asking(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "model.pt")
    original = _sha(ckpt)
    base = ["export", "--checkpoint", str(ckpt), "--format", "torchscript"]
    assert main([*base, "--out", str(ckpt)]) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
    assert main([*base, "--out", str(ckpt), "--overwrite"]) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
    assert _sha(ckpt) == original
    target = tmp_path / "m.ts"
    target.write_bytes(b"keep me")
    assert main([*base, "--out", str(target)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and target.read_bytes() == b"keep me"
    assert main([*base, "--out", str(target), "--overwrite", "--json"]) == 0
    assert target.read_bytes() != b"keep me"
    capsys.readouterr()
    bad_names = _checkpoint(tmp_path, "names.pt", class_names=["a", "b"])
    assert main(["export", "--checkpoint", str(bad_names), "--format", "torchscript",
                 "--out", str(tmp_path / "n.ts")]) == 2
    assert "names 2 classes but its model has 10 outputs" in capsys.readouterr().err


def test_cifar_string_labels_name_the_file(tmp_path):
    import pickle

    import numpy as np

    from tdaf.classification.data.cifar10 import Cifar10Dataset

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = ["cat", "dog"] if name == "data_batch_3" else [0, 1]
        (root / name).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": labels}))
    with pytest.raises(ValueError, match=r"data_batch_3: 'labels' must be integers 0..9"):
        Cifar10Dataset(tmp_path, "train")


def test_resume_takes_the_checkpoints_config_and_accepts_repeated_defaults(tmp_path, capsys):
    out = tmp_path / "d"
    tdaf_flags = [f if f != "resnet18_cifar" else "tdaf_resnet18_cifar" for f in FLAGS]
    assert main(["train", *tdaf_flags, "--epochs", "1", "--out", str(out)]) == 0
    # the defaults typed explicitly are the same architecture
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--flows", "3",
                 "--anar", "anar3", "--no-progress"]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "3", "--flows", "2"]) == 2
    err = capsys.readouterr().err
    assert "--flows: got 2, but" in err and "keeps the task, model and data" in err, err
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "3", "--model", "resnet18_cifar"]) == 2
    assert "--model: got 'resnet18_cifar', but" in capsys.readouterr().err
    # nothing else typed: the checkpoint's config (subset, input size, lr, ...) continues the run
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "3", "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["config"]["train_subset"] == 16 and ckpt["config"]["input_size"] == 8


def test_a_one_class_data_set_trains_with_a_warning(tmp_path, caplog):
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / "d" / split / "only").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "d" / split / "only" / f"{i}.png")
    with caplog.at_level("WARNING"):
        Trainer(_cfg(tmp_path, "one", data="imagefolder", data_dir=str(tmp_path / "d"), epochs=1,
                     train_subset=None, val_subset=None, batch_size=4, workers=0)).fit()
    assert "has 1 class (only)" in caplog.text


def test_training_guide_states_what_survives(tmp_path):
    guide = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    for failure in ("kill -9", "SIGTERM", "Ctrl-C", "diverge", "disk full"):
        assert failure in guide, failure


def test_a_missing_optional_package_names_its_extra(monkeypatch, capsys):
    import sys

    from tdaf.data import digits

    digits._all_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if scikit-learn were not installed
    try:
        assert main(["train", "--epochs", "1", "--out", "/tmp/tdaf-never-written"]) == 2
        err = capsys.readouterr().err.strip()
        assert "needs the Python package 'sklearn'" in err and "pip install 'tdaf[demo]'" in err
        assert len(err.splitlines()) == 1
    finally:
        digits._all_digits.cache_clear()


def test_the_task_extras_name_themselves_when_missing(monkeypatch):
    import sys

    from tdaf.io.optional import MissingDependency
    from tdaf.pose.data import load_coco
    from tdaf.video.io import count_frames

    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingDependency, match=r"pip install 'tdaf\[coco\]'"):
        load_coco("annotations.json")
    with pytest.raises(MissingDependency, match=r"pip install 'tdaf\[video\]'"):
        count_frames("clip.mp4")
