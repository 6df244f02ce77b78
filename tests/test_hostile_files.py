"""No command writes over an input or leaves a partial file (issue 24's campaign, part 1).

Every command that writes is run as a user would, with its output pointed at its own
inputs; the inputs are hashed before and after. The rule (``tdaf.io.Outputs``): never over
an input, even with ``--overwrite``; over an existing file only with ``--overwrite``;
outputs named ``<stem>_pred.png`` / ``<stem>_skeleton.png`` so that the output folder may be
the input folder; everything written when the run succeeded, nothing when it failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _hostile import classification_checkpoint, hashes, one_line_error, photos, run

from tdaf.io.outputs import Outputs


# ---------------------------------------------------------------- the helper itself
def test_an_input_is_never_claimed_even_with_overwrite_nor_under_another_name(tmp_path):
    image = photos(tmp_path / "in", n=1) / "photo0.png"
    os.link(image, tmp_path / "alias.png")
    for overwrite in (False, True):
        out = Outputs(overwrite=overwrite)
        out.protect([image], "image")
        for target in (image, tmp_path / "in" / ".." / "in" / "photo0.png", tmp_path / "alias.png"):
            with pytest.raises(ValueError, match=r"--out: .* is the input image.* never writes over its inputs"):
                out.claim(target, "--out")


def test_existing_files_need_overwrite_and_a_failure_leaves_nothing(tmp_path):
    (tmp_path / "old.json").write_text("keep")
    with pytest.raises(ValueError, match="old.json already exists; pass --overwrite"):
        Outputs().claim(tmp_path / "old.json", "--x")
    out = Outputs()
    target = out.claim(tmp_path / "new" / "deeper" / "a.txt", "--x")
    with pytest.raises(ValueError, match="written twice"):
        out.claim(tmp_path / "new" / "deeper" / "a.txt", "--y")
    with pytest.raises(RuntimeError, match="boom"):
        with out:
            out.write_text("half", target)
            assert not target.exists()  # staged: the name appears at commit only
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()  # the folders this run made are gone again
    out = Outputs(overwrite=True)
    out.claim(tmp_path / "old.json", "--x")
    with out:
        out.write_text("new", tmp_path / "old.json")
    assert (tmp_path / "old.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_write_that_fails_names_the_users_file_not_a_temporary(tmp_path):
    out = Outputs()
    target = out.claim(tmp_path / "result.json", "--x")
    with pytest.raises(OSError) as e:
        with out:
            out.write_text("{}", target)
            target.mkdir()  # the name became a folder while the command worked
    assert e.value.filename == str(target) and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_folders_that_cannot_hold_outputs_are_refused_without_creating_anything(tmp_path):
    (tmp_path / "file").write_text("x")
    for target, message in ((tmp_path / "file" / "a.png", "is a file, expected a folder"),
                            (tmp_path / "file" / "sub" / "a.png", "is a file, not a folder"),
                            (Path("/proc/tdaf-test/a.png"), "cannot write in /proc/tdaf-test"),
                            (tmp_path, "is a folder; expected a file name")):
        with pytest.raises(ValueError, match=message):
            Outputs().claim(target, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------- detection
def test_eval_detections_never_replace_the_checkpoint_or_the_annotations(detection_run, tmp_path, capsys):
    scenes, ckpt = detection_run
    before = hashes(ckpt, scenes)
    base = ["eval", "--checkpoint", ckpt, "--data-dir", scenes, "--no-progress", "--workers", "0"]
    for target, role, extra in ((ckpt, "checkpoint", ["--overwrite"]),
                                (scenes / "annotations" / "instances_val.json", "annotations", ["--overwrite"]),
                                (scenes / "val" / "000000.png", "image", [])):
        code, _, err = run([*base, "--detections", target, *extra], capsys)
        assert code == 2
        one_line_error(err, "--detections:", str(target), f"is the input {role}")
    folder = tmp_path / "some_folder"
    folder.mkdir()
    code, _, err = run([*base, "--detections", folder], capsys)
    line = one_line_error(err, "--detections:", str(folder), "is a folder")
    assert ".tmp" not in line and code == 2  # the user's path, not an internal temporary one
    assert hashes(ckpt, scenes) == before

    dets = tmp_path / "d.json"
    assert run([*base, "--detections", dets, "--json"], capsys)[0] == 0 and json.loads(dets.read_text()) is not None
    dets.write_text("mine")
    code, _, err = run([*base, "--detections", dets], capsys)
    one_line_error(err, "d.json already exists; pass --overwrite")
    assert dets.read_text() == "mine"
    assert run([*base, "--detections", dets, "--overwrite", "--json"], capsys)[0] == 0
    assert isinstance(json.loads(dets.read_text()), list)
    assert hashes(ckpt, scenes) == before


def test_predict_into_the_photo_folder_keeps_every_photo(detection_run, tmp_path, capsys):
    _, ckpt = detection_run
    folder = photos(tmp_path / "photos", n=2, extra={"predictions.json": b'{"mine": 1}'})
    before = hashes(folder, ckpt)
    argv = ["predict", "--checkpoint", ckpt, folder, "--out-dir", folder, "--score-thresh", "0", "--attention",
            "--no-progress"]
    code, _, err = run(argv, capsys)
    one_line_error(err, "--out-dir:", "predictions.json already exists; pass --overwrite")
    assert code == 2 and hashes(folder) == {k: v for k, v in before.items() if k != str(ckpt)}  # nothing written

    code, out, err = run([*argv, "--overwrite", "--json"], capsys)
    assert code == 0, err
    after = hashes(folder, ckpt)
    assert {k: after[k] for k in before if not k.endswith("predictions.json")} == \
        {k: v for k, v in before.items() if not k.endswith("predictions.json")}
    assert sorted(p.name for p in folder.iterdir()) == [
        "photo0.png", "photo0_attention.png", "photo0_pred.png", "photo1.png", "photo1_attention.png",
        "photo1_pred.png", "predictions.json"]
    assert json.loads((folder / "predictions.json").read_text())["results"][0]["picture"].endswith("photo0_pred.png")

    # Run again over the folder: the pictures are now inputs too, and stay untouched.
    code, _, err = run([*argv, "--overwrite"], capsys)
    one_line_error(err, "--out-dir:", "photo0_pred.png is the input image", "even with --overwrite")
    assert hashes(folder) == {k: v for k, v in after.items() if k != str(ckpt)}
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_predict_out_dir_checks_come_before_any_work(detection_run, tmp_path, capsys):
    _, ckpt = detection_run
    folder = photos(tmp_path / "p", n=1)
    (tmp_path / "file").write_text("x")
    code, _, err = run(["predict", "--checkpoint", ckpt, folder, "--out-dir", tmp_path / "file"], capsys)
    one_line_error(err, "--out-dir:", "is a file")
    code, _, err = run(["predict", "--checkpoint", ckpt, folder / "photo0.png", tmp_path / "missing.png",
                        "--out-dir", tmp_path / "new"], capsys)
    assert code == 2 and not (tmp_path / "new").exists()


# ---------------------------------------------------------------- pose
def test_pose_skeletons_into_the_photo_folder_keep_every_photo(pose_run, tmp_path, capsys):
    _, ckpt = pose_run
    folder = photos(tmp_path / "photos", n=2, size=(96, 128))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"photo0.png": [[10, 10, 40, 80, 0.9]]}))
    before = hashes(folder, ckpt, boxes)
    argv = ["predict", "--checkpoint", ckpt, folder, "--skeleton-out", folder, "--no-progress", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert {k: v for k, v in hashes(folder, ckpt).items() if k in before} == \
        {k: v for k, v in before.items() if k != str(boxes)}
    assert sorted(p.name for p in folder.iterdir()) == ["photo0.png", "photo0_skeleton.png", "photo1.png",
                                                        "photo1_skeleton.png"]
    assert json.loads(out)["drawn"][0].endswith("photo0_skeleton.png")
    code, _, err = run(["predict", "--checkpoint", ckpt, folder / "photo0.png", "--person-boxes", boxes,
                        "--skeleton-out", tmp_path / "drawn"], capsys)
    assert code == 0 and (tmp_path / "drawn" / "photo0_skeleton.png").is_file()
    code, _, err = run(["predict", "--checkpoint", ckpt, folder / "photo0.png", "--person-boxes", boxes,
                        "--skeleton-out", tmp_path / "drawn"], capsys)
    one_line_error(err, "--skeleton-out:", "photo0_skeleton.png already exists; pass --overwrite")
    assert hashes(boxes, ckpt) == {k: v for k, v in before.items() if k in (str(boxes), str(ckpt))}


# ---------------------------------------------------------------- attention
def test_attention_into_the_image_folder_and_bad_inputs_create_nothing(tmp_path, capsys):
    folder = photos(tmp_path / "imgs", n=2, size=(16, 16))
    before = hashes(folder)
    base = ["attention", "--model", "tdaf_resnet18_cifar", "--num-classes", "3", "--no-progress"]
    code, out, err = run([*base, folder, "--out", folder], capsys)
    assert code == 0, err
    assert {k: v for k, v in hashes(folder).items() if k in before} == before
    assert sorted(p.name for p in folder.glob("*.attention.png")) == ["photo0.attention.png", "photo1.attention.png"]
    code, _, err = run([*base, folder / "photo0.png", "--out", folder], capsys)
    one_line_error(err, "--out:", "photo0.attention.png already exists")
    for bad in ([tmp_path / "missing.png"], [folder / "photo0.png", "--frame", "3"], [tmp_path / "empty_dir"]):
        (tmp_path / "empty_dir").mkdir(exist_ok=True)
        code, _, err = run([*base, *bad, "--out", tmp_path / "never"], capsys)
        assert code == 2 and not (tmp_path / "never").exists(), err


def test_attention_frame_is_checked_at_both_ends_of_the_clip(video_run, tmp_path, capsys):
    from PIL import Image
    from test_video_data import ramp_frames

    _, ckpt = video_run
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, f in enumerate(ramp_frames(16, size=32)):
        Image.fromarray(f).save(frames / f"image_{t + 1:05d}.png")
    for frame in (-1, 16, 99):
        code, _, err = run(["attention", "--checkpoint", ckpt, frames, "--out", tmp_path / "a", "--frame", frame],
                           capsys)
        one_line_error(err, f"--frame: got {frame}; allowed: 0..15 (the clip has 16 frames)")
        assert code == 2 and not (tmp_path / "a").exists()
    code, out, err = run(["attention", "--checkpoint", ckpt, frames, "--out", tmp_path / "a", "--frame", "15",
                          "--no-progress"], capsys)
    assert code == 0 and out.strip().endswith(".frame15.attention.png"), err


# ---------------------------------------------------------------- export
def test_export_of_a_video_checkpoint_and_failures_that_leave_nothing(video_run, tmp_path, capsys, monkeypatch):
    import tdaf.cli.export as export_cli
    from tdaf.export import ExportReport

    _, ckpt = video_run
    before = hashes(ckpt)
    out = tmp_path / "video.ts"
    argv = ["export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out]
    code, text, err = run(argv, capsys)
    assert code == 0, err
    assert "input (B, 3, T, H, W): batch dynamic, length/height/width" in text and out.is_file()
    code, _, err = run(argv, capsys)
    one_line_error(err, "video.ts already exists; pass --overwrite")
    for extra in ([], ["--overwrite"]):
        code, _, err = run([*argv[:-1], ckpt, *extra], capsys)
        one_line_error(err, "--out:", "is the input checkpoint")
    assert hashes(ckpt) == before

    failed = tmp_path / "failed.ts"

    def broken(*args, **kwargs):  # a bug in the report printer, after the export
        raise ValueError("the report could not be made")

    monkeypatch.setattr(export_cli, "_describe", broken)
    code, _, err = run([*argv[:-1], failed], capsys)
    assert code == 1 and "internal error" in err  # a bug is not reported as bad input
    assert not failed.exists() and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    monkeypatch.setattr(ExportReport, "ok", lambda self, tol: False)
    code, _, err = run([*argv[:-1], failed], capsys)
    assert code == 1 and "was not written" in err and not failed.exists() and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- train
def test_train_never_writes_over_its_config_or_weights_inputs(tmp_path, capsys):
    flags = ["--model", "resnet18_cifar", "--input-size", "8", "--train-subset", "16", "--val-subset", "16",
             "--batch-size", "8", "--lr", "0.01", "--lr-batch", "16", "--no-progress", "--no-tensorboard"]
    out = tmp_path / "run"
    assert run(["train", *flags, "--epochs", "1", "--out", out], capsys)[0] == 0
    config = out / "config.yaml"
    before = hashes(out)
    code, _, err = run(["train", "--config", config, "--out", out, "--overwrite"], capsys)
    one_line_error(err, "--config:", "a file this run writes")
    code, _, err = run(["train", *flags, "--epochs", "1", "--pretrained", out / "best.pt", "--out", out,
                        "--overwrite"], capsys)
    one_line_error(err, "--pretrained:", "a file this run writes")
    other = tmp_path / "other"
    assert run(["train", *flags, "--epochs", "1", "--seed", "1", "--out", other], capsys)[0] == 0
    code, _, err = run(["train", "--resume", other / "last.pt", "--epochs", "2", "--out", out], capsys)
    one_line_error(err, "--out:", "holds a checkpoint (last.pt) of another run than --resume")
    assert hashes(out) == before


def test_every_writing_command_takes_overwrite():
    from tdaf.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("train", "eval", "predict", "attention", "export"):
        assert "--overwrite" in sub.choices[name].format_help(), name


def test_classification_commands_write_nothing_beside_their_inputs(tmp_path, capsys):
    ckpt = classification_checkpoint(tmp_path)
    folder = photos(tmp_path / "p", n=2, size=(8, 8))
    before = hashes(tmp_path)
    assert run(["predict", "--checkpoint", ckpt, folder, "--json", "--no-progress"], capsys)[0] == 0
    assert run(["eval", "--checkpoint", ckpt, "--data", "digits", "--subset", "8", "--json", "--no-progress"],
               capsys)[0] == 0
    assert hashes(tmp_path) == before
