"""The guarantees that held in the campaign, kept for every task and every command (issue 24,
part 3): code-running pickles refused everywhere, truncated / empty checkpoints refused in
one line, a diverging resumed run and a kill during a save leave the checkpoints as they were.

The classification-era versions (with more failure modes) are in ``test_reliability.py``;
these run the same cases over the detection, pose and video tasks' commands.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from _hostile import evil_checkpoint, hashes, one_line_error, photos, run, truncated_copy

import tdaf.engine.trainer as trainer_mod
from tdaf.engine.checkpoint import load_checkpoint

TASKS = ("classification", "detection", "pose", "video")


def _commands(ckpt, image, out):
    """Every command that reads a checkpoint file, as a user runs it."""
    return {
        "eval": ["eval", "--checkpoint", ckpt],
        "predict": ["predict", "--checkpoint", ckpt, image],
        "export": ["export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out / "m.ts"],
        "attention": ["attention", "--checkpoint", ckpt, image, "--out", out / "attention"],
        "train --resume": ["train", "--resume", ckpt, "--out", out / "resumed"],
        "train --pretrained": ["train", "--task", "classification", "--model", "resnet18_cifar", "--pretrained", ckpt,
                               "--epochs", "1", "--out", out / "pretrained"],
    }


@pytest.mark.parametrize("task", TASKS)
def test_code_running_pickles_are_refused_by_every_command(task, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    ckpt = evil_checkpoint(tmp_path / f"{task}.pt", marker, task)
    image = photos(tmp_path / "img", n=1, size=(8, 8)) / "photo0.png"
    out = tmp_path / "out"
    for name, argv in _commands(ckpt, image, out).items():
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        one_line_error(err, "refused to load", str(ckpt), "weights_only=True")
        assert not marker.exists(), name
    assert not out.exists()  # nothing created for a refused input


@pytest.fixture(scope="module")
def checkpoints(detection_run, pose_run, video_run, tmp_path_factory):
    from _hostile import classification_checkpoint

    return {"classification": classification_checkpoint(tmp_path_factory.mktemp("cls")),
            "detection": detection_run[1], "pose": pose_run[1], "video": video_run[1]}


@pytest.mark.parametrize("task", TASKS)
def test_truncated_and_empty_checkpoints_get_one_line(task, checkpoints, tmp_path, capsys):
    image = photos(tmp_path / "img", n=1, size=(8, 8)) / "photo0.png"
    half = truncated_copy(checkpoints[task], tmp_path / "half.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for ckpt, message in ((half, "is truncated or not a PyTorch file"), (empty, "is empty (0 bytes)")):
        for name, argv in _commands(ckpt, image, tmp_path / "out").items():
            code, _, err = run(argv, capsys)
            assert code == 2, (name, err)
            one_line_error(err, str(ckpt), message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ("detection", "pose", "video"))
def test_a_checkpoint_of_another_task_is_refused_by_name(task, checkpoints, tmp_path, capsys):
    other = {"detection": "--ten-crop", "pose": "--ten-crop", "video": "--person-boxes"}[task]
    argv = ["eval", "--checkpoint", checkpoints[task], other] + (["x.json"] if other == "--person-boxes" else [])
    code, _, err = run(argv, capsys)
    one_line_error(err, other, f"is a {task} checkpoint")
    assert code == 2


def test_a_diverging_resumed_video_run_keeps_its_checkpoints(video_run, tmp_path, capsys):
    _, ckpt = video_run
    run_dir = tmp_path / "run"
    shutil.copytree(ckpt.parent, run_dir)
    before = hashes(*(run_dir / n for n in ("last.pt", "best.pt", "metrics.csv")))
    code, _, err = run(["train", "--resume", run_dir / "last.pt", "--epochs", "4", "--lr", "1e12", "--no-progress"],
                       capsys)
    assert code == 1 and "Traceback" not in err, err
    assert "tdaf train: error:" in err and "diverged" in err and "last.pt (epoch 1) is kept" in err, err
    assert hashes(*(run_dir / n for n in ("last.pt", "best.pt", "metrics.csv"))) == before


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_kill_while_saving_a_pose_checkpoint_then_resume_is_bit_identical(pose_run, tmp_path, monkeypatch):
    from tdaf.engine.trainer import train

    coco, _ = pose_run
    cfg = dict(task="pose", model="simplebaseline_resnet18", data="coco", data_dir=str(coco), input_size=128,
               batch_size=2, optimizer="adam", lr=1e-3, lr_batch=2, weight_decay=0.0, workers=0, epochs=2,
               progress=False, tensorboard=False, seed=3)
    full = train({**cfg, "out": str(tmp_path / "full")})
    real = trainer_mod.atomic_save

    def dying(payload, path):
        if payload["epoch"] == 2:  # what SIGKILL leaves mid-save: a partial temporary beside the file
            (out / f".{path.name}.killed.tmp").write_bytes(b"PK half")
            raise Killed
        return real(payload, path)

    monkeypatch.setattr(trainer_mod, "atomic_save", dying)
    out = tmp_path / "cut"
    with pytest.raises(Killed):
        train({**cfg, "out": str(out)})
    monkeypatch.setattr(trainer_mod, "atomic_save", real)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    train({**cfg, "out": str(out), "resume": str(out / "last.pt")})
    assert not list(out.glob(".*.tmp"))
    a, b = load_checkpoint(full["last"]), load_checkpoint(out / "last.pt")
    assert b["epoch"] == 2 and all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
