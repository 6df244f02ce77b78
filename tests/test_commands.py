"""``tdaf eval`` and ``tdaf predict`` on a tiny trained checkpoint of every task, through
``tdaf.cli.main``: one command layer over the task interface (issue 22). The data is found
from the path the checkpoint records (absolute), from any working directory; ``--data-dir``
overrides it; the outputs asked for are written where asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tdaf.cli.main import main
from tdaf.engine.checkpoint import load_checkpoint
from tdaf.engine.evaluate import evaluate_checkpoint

TASKS = ("classification", "detection", "pose", "video")
METRICS = {
    "classification": {"top1", "top5"},
    "detection": {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"},
    "pose": {"AP", "AP50", "AP75", "AP_M", "AP_L", "AR"},
    "video": {"clip_top1", "clip_top5", "video_top1", "video_top5"},
}

MAIN = {"classification": "top1", "detection": "AP", "pose": "AP", "video": "video_top1"}


def _run(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("task", TASKS)
def test_eval_finds_the_recorded_data_from_any_folder(task, request, tmp_path, monkeypatch, capsys):
    data, ckpt = request.getfixturevalue(f"{task}_run")
    assert load_checkpoint(ckpt)["meta"]["data_dir"] == str(Path(data).resolve())  # absolute, as recorded
    monkeypatch.chdir(tmp_path)  # not where training ran: a relative path would not be found
    argv = ["eval", "--checkpoint", ckpt, "--workers", "0", "--no-progress", "--detections", tmp_path / "d.json"]
    if task != "detection":
        argv = argv[:-2]
    code, out, err = _run(argv + ["--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert METRICS[task] <= set(result) and isinstance(result[MAIN[task]], float)
    assert all(result[k] is None or 0.0 <= result[k] <= 1.0 for k in METRICS[task])  # None: no such objects (COCO's -1)
    assert (result["checkpoint"], result["split"], result["data_dir"]) == (str(ckpt), "val", str(Path(data).resolve()))
    assert result["epoch"] == 1 and result["skipped"] == 0
    if task == "detection":
        assert len(json.loads((tmp_path / "d.json").read_text())) == result["detections_count"]
    code, text, err = _run(argv + ["--overwrite"], capsys)  # the task's own text
    assert code == 0 and "/val" in text and result["model"] in text, err


@pytest.mark.parametrize("task", TASKS)
def test_data_dir_overrides_the_recorded_folder(task, request, tmp_path, capsys):
    _, ckpt = request.getfixturevalue(f"{task}_run")
    argv = ["eval", "--checkpoint", ckpt, "--data-dir", tmp_path / "nowhere", "--no-progress", "--workers", "0"]
    if task == "detection":  # bundled digit scenes: written into the folder given, and evaluated there
        code, out, err = _run(argv + ["--json", "--detections", tmp_path / "d.json"], capsys)
        assert code == 0 and json.loads(out)["data_dir"] == str(tmp_path / "nowhere"), err
        assert (tmp_path / "nowhere" / "annotations").is_dir()
    else:  # a folder of the data set's layout: none there
        code, _, err = _run(argv, capsys)
        assert code == 2 and "nowhere" in err and len(err.strip().splitlines()) == 1


def test_evaluate_checkpoint_is_one_function_for_every_task(classification_run, pose_run):
    _, ckpt = classification_run
    one = evaluate_checkpoint(ckpt, progress=False, workers=0)
    ten = evaluate_checkpoint(ckpt, progress=False, workers=0, task={"ten_crop": True})
    assert (one["crops"], ten["crops"], one["images"], ten["images"]) == (1, 10, 6, 6)
    with pytest.raises(ValueError, match="--clips: only for video checkpoints; .* is a classification checkpoint"):
        evaluate_checkpoint(ckpt, task={"clips": 3})
    with pytest.raises(ValueError, match="--nonsense: not an option of classification checkpoints .*theirs: --ten-crop"):
        evaluate_checkpoint(ckpt, task={"nonsense": 3})
    coco, pose_ckpt = pose_run
    flip, no_flip = (evaluate_checkpoint(pose_ckpt, progress=False, workers=0, task={"no_flip_test": f})
                     for f in (False, True))
    assert flip["flip_test"] and not no_flip["flip_test"] and flip["persons"] == no_flip["persons"] == 2


def _pose_boxes(tmp_path: Path) -> tuple[Path, Path]:
    """The same person boxes in both layouts of --person-boxes (the val images of write_coco)."""
    boxes = {200: [[40.0, 30.0, 100.0, 120.0, 0.9], [0.0, 0.0, 60.0, 60.0, 0.5]], 201: [[44.0, 30.0, 100.0, 120.0, 0.8]]}
    results, named = tmp_path / "results.json", tmp_path / "named.json"
    results.write_text(json.dumps([{"image_id": i, "category_id": 1, "bbox": b[:4], "score": b[4]}
                                   for i, bs in boxes.items() for b in bs]
                                  + [{"image_id": 200, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.99}]))
    named.write_text(json.dumps({f"{i:012d}.jpg": bs for i, bs in boxes.items()}))
    return results, named


def test_person_boxes_one_format_for_eval_and_predict(pose_run, tmp_path, capsys):
    coco, ckpt = pose_run
    results, named = _pose_boxes(tmp_path)
    evals, preds = [], []
    for boxes in (results, named):
        code, out, err = _run(["eval", "--checkpoint", ckpt, "--person-boxes", boxes, "--json", "--no-progress",
                               "--workers", "0"], capsys)
        assert code == 0, err
        evals.append(json.loads(out))
        code, out, err = _run(["predict", "--checkpoint", ckpt, coco / "val2017", "--person-boxes", boxes, "--json",
                               "--no-progress"], capsys)
        assert code == 0, err
        preds.append({Path(r["file"]).name: r["persons"] for r in json.loads(out)["results"]})
    assert evals[0]["AP"] == evals[1]["AP"] and evals[0]["boxes"] != "ground truth"
    assert preds[0] == preds[1]  # the same boxes, in either layout, give the same joints
    assert [len(preds[0][f"{i:012d}.jpg"]) for i in (200, 201)] == [2, 1]  # another category's box left out
    code, out, err = _run(["predict", "--checkpoint", ckpt, coco / "val2017", "--person-boxes", results,
                           "--person-score-thr", "0.6", "--json", "--no-progress"], capsys)
    assert code == 0 and [len(r["persons"]) for r in json.loads(out)["results"]] == [1, 1], err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 200, "category_id": 1, "bbox": [1, 1, -5, 5], "score": 0.9}]))
    for command in ("eval", "predict"):
        argv = [command, "--checkpoint", ckpt, "--person-boxes", bad, "--no-progress"]
        code, _, err = _run(argv + ([coco / "val2017"] if command == "predict" else []), capsys)
        assert code == 2 and "detection 0 (image id 200)" in err and len(err.strip().splitlines()) == 1


def test_eval_and_predict_of_a_dense_task_fold_batchnorm_with_the_same_results(video_run, tmp_path, capsys):
    # The default, --fold-bn, runs the inference form (tdaf.fold_batchnorm); the 3D model's
    # MFBNs folded per flow give the model's clip scores to float rounding.
    data, ckpt = video_run
    evals, preds = {}, {}
    for flag in ("--fold-bn", "--no-fold-bn"):
        code, out, err = _run(["eval", "--checkpoint", ckpt, "--workers", "0", "--no-progress", "--json", flag], capsys)
        assert code == 0, err
        evals[flag] = json.loads(out)
        args, _ = _predict_case("video", Path(data), tmp_path)
        code, out, err = _run(["predict", "--checkpoint", ckpt, "--no-progress", "--json", flag] + args, capsys)
        assert code == 0, err
        preds[flag] = {(r["file"], t["label"]): t["score"] for r in json.loads(out)["results"] for t in r["topk"]}
    folded, plain = evals["--fold-bn"], evals["--no-fold-bn"]
    assert folded["fold_bn"] is True and plain["fold_bn"] is False
    assert {k: folded[k] for k in METRICS["video"]} == {k: plain[k] for k in METRICS["video"]}
    assert folded["loss"] == pytest.approx(plain["loss"], abs=1e-5)
    assert preds["--fold-bn"].keys() == preds["--no-fold-bn"].keys()
    assert max(abs(preds["--fold-bn"][k] - preds["--no-fold-bn"][k]) for k in preds["--fold-bn"]) < 1e-5


def _predict_case(task: str, data: Path, tmp_path: Path) -> tuple[list, int]:
    """The inputs and task flags of a predict run, and how many results it must give."""
    if task == "classification":
        return [data / "val", "--topk", "2"], 6
    if task == "detection":
        return [data / "val", "--out-dir", tmp_path / "out", "--score-thresh", "0"], 2
    if task == "pose":
        return [data / "val2017", "--skeleton-out", tmp_path / "out"], 2
    return [data / "val", "--clips-per-video", "2"], 2


@pytest.mark.parametrize("task", TASKS)
def test_predict_on_every_task(task, request, tmp_path, capsys):
    data, ckpt = request.getfixturevalue(f"{task}_run")
    args, count = _predict_case(task, Path(data), tmp_path)
    code, out, err = _run(["predict", "--checkpoint", ckpt, "--no-progress", "--json"] + args, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["checkpoint"] == str(ckpt) and len(report["results"]) == count and report["skipped"] == []
    meta = load_checkpoint(ckpt)["meta"]
    if task in ("classification", "video"):
        names = set(meta["class_names"])
        k = 2 if task == "classification" else len(names)
        assert all(len(r["topk"]) == k and {t["label"] for t in r["topk"]} <= names for r in report["results"])
        assert all(r["topk"][0]["score"] >= r["topk"][-1]["score"] for r in report["results"])
    if task == "video":
        assert all(r["clips"] == 2 for r in report["results"])
    if task in ("detection", "pose"):
        suffix = "_pred.png" if task == "detection" else "_skeleton.png"
        for r in report["results"]:
            picture = tmp_path / "out" / (Path(r["file"]).stem + suffix)
            assert _enlarged(Image.open(picture).size, Image.open(r["file"]).size)
    code, text, err = _run(["predict", "--checkpoint", ckpt, "--no-progress", "--overwrite"] + args, capsys)
    assert code == 0 and meta["model_name"] in text, err


def _enlarged(size: tuple[int, int], original: tuple[int, int]) -> bool:
    """A picture is its image enlarged by the smallest whole factor that makes the short side >= 512."""
    factor = max(1, -(-512 // min(original)))
    return size == (original[0] * factor, original[1] * factor)


@pytest.mark.parametrize("task", TASKS)
def test_draw_prediction_is_the_tasks_one_picture(task, request):
    from tdaf.engine.task import get_task

    _, ckpt = request.getfixturevalue(f"{task}_run")
    meta = load_checkpoint(ckpt)["meta"]
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    prediction = {"detection": {"detections": [{"box": [2, 2, 20, 20], "label": "1", "score": 0.5}]},
                  "pose": {"persons": [{"box": [2, 2, 30, 20], "keypoints": [[5.0, 5.0, 0.9]] * 17}]}}.get(task)
    picture = get_task(task)().draw_prediction(image, prediction or {}, meta)
    if prediction is None:  # classification and video draw no pictures
        assert picture is None
    else:
        assert _enlarged(picture.size, image.size)
        assert picture.resize(image.size, Image.NEAREST).tobytes() != image.tobytes()
