"""The video task end to end: train, evaluate with video-level averaging, predict, profile, attention."""

from __future__ import annotations

import json

import pytest
import torch
from test_video_data import ramp_frames, write_kinetics

from tdaf.cli.main import main
from tdaf.engine.checkpoint import load_checkpoint
from tdaf.engine.config import TrainConfig
from tdaf.engine.task import get_task
from tdaf.video.digits import write_video
from tdaf.video.metrics import VideoEvaluator

MODEL = "tdaf_r3d_resnet10_w16"


def test_video_accuracy_averages_the_clips_of_each_video():
    ev = VideoEvaluator()
    # video 0 (label 0): clips say 1, 0, 0 -> clip top-1 2/3, video right
    # video 1 (label 1): one confident wrong clip outweighs two weakly right ones -> video wrong
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, 0.1], [0.0, 0.1]])
    targets = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]])
    ev.update(logits[:4], targets[:4])
    ev.update(logits[4:], targets[4:])  # a video's clips may span batches
    ev.gather()
    out = ev.compute()
    assert out["clip_top1"] == pytest.approx(4 / 6)
    assert out["video_top1"] == 0.5 and out["video_top5"] == 1.0
    assert (out["clips"], out["videos"], out["looped_videos"]) == (6, 2, 1)
    assert out["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets[:, 0]).item())


def test_check_config_states_the_minimum_clip_and_refuses_2d_models():
    task = get_task("video")()
    cfg = TrainConfig(task="video", model=MODEL, data="moving_digits", input_size=24)
    with pytest.raises(ValueError, match=r"16x24x24 are too small .*minimum is 16x32x32"):
        task.check_config(cfg)
    with pytest.raises(ValueError, match="is a classification model"):
        task.check_config(TrainConfig(task="video", model="resnet18", data="moving_digits"))
    assert task.input_dims() == 3


def test_train_eval_predict_on_written_videos(tmp_path, capsys):
    root = write_kinetics(tmp_path / "k", videos_per_class=2, frames=20, size=40)
    write_video(root / "val" / "a" / "short.mp4", ramp_frames(6, size=40))  # shorter than a clip: looped
    out = tmp_path / "run"
    flags = ["train", "--task", "video", "--model", MODEL, "--data", "kinetics", "--data-dir", str(root),
             "--input-size", "32", "--epochs", "1", "--batch-size", "4", "--lr", "0.01", "--lr-batch", "4",
             "--workers", "0", "--no-progress", "--no-tensorboard", "--out", str(out)]
    assert main(flags) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["task"] == "video" and ckpt["meta"]["input_size"] == [3, 16, 32, 32]
    assert ckpt["meta"]["class_names"] == ["a", "b"] and ckpt["meta"]["clips"] == 10
    row = ckpt["history"][0]
    assert torch.isfinite(torch.tensor(row["train_loss"])) and 0 <= row["val_video_top1"] <= 1
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data-dir", str(root), "--clips", "2",
                 "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["videos"], result["clips"], result["clips_per_video"]) == (5, 10, 2)
    assert result["looped_videos"] == 1 and result["skipped"] == 0
    assert 0 <= result["video_top1"] <= 1 and 0 <= result["clip_top1"] <= 1

    (root / "val" / "b" / "junk.mp4").write_bytes(b"not a video")
    assert main(["predict", "--checkpoint", str(out / "last.pt"), str(root / "val"), "--clips-per-video", "2",
                 "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert len(pred["results"]) == 5 and [s["file"] for s in pred["skipped"]] == [str(root / "val/b/junk.mp4")]
    scores = [t["score"] for t in pred["results"][0]["topk"]]
    assert len(scores) == 2 and sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--ten-crop"]) != 0
    assert "--ten-crop: only for classification checkpoints" in capsys.readouterr().err


def test_profile_and_attention_take_video_models(tmp_path, capsys):
    assert main(["profile", "r3d_resnet10_w16", "--no-latency", "--no-baseline", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["input_size"] == [3, 16, 32, 32] and row["gmacs"] > 0
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    for t, f in enumerate(ramp_frames(16, size=32)):
        Image.fromarray(f).save(frames / f"image_{t + 1:05d}.png")
    assert main(["attention", "--model", MODEL, "--num-classes", "4", str(frames), "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == 1 and written[0].endswith(".attention.png")
