"""Dense-task data that is wrong is refused by name, or warned about (issue 24, part 2).

Each case is the annotation or box file a user might give, on disk in its real format;
the error is one line naming the file, the annotation / image id or box, the field, what
was given and what is allowed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from _hostile import one_line_error, photos, run
from PIL import Image
from test_pose import write_coco

from tdaf.detection import CocoDetection
from tdaf.pose.data import CocoPersons
from tdaf.pose.predict import read_box_file


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco"))


def _edited(coco: Path, tmp_path: Path, edit) -> Path:
    """A copy of the val annotations with ``edit(data)`` applied; returns the file."""
    data = json.loads((coco / "annotations" / "person_keypoints_val2017.json").read_text())
    edit(data)
    out = tmp_path / "person_keypoints_val2017.json"
    out.write_text(json.dumps(data))
    return out


def _set(field: str, value):
    def edit(data):
        data["annotations"][0][field] = value
    return edit


def _keypoint(k: int, value):
    def edit(data):
        data["annotations"][0]["keypoints"][k] = value
    return edit


# ---------------------------------------------------------------- pose annotations
@pytest.mark.parametrize("edit, message", [
    (_set("keypoints", list(range(50))), r"keypoints has 50 values; allowed: 3 x 17 = 51 numbers"),
    (_keypoint(2, 7), r"keypoints\[2\] \(joint 1 visibility\) is 7; allowed: 0 \(not labelled\), 1 .* or 2"),
    (_keypoint(5, -1), r"keypoints\[5\] \(joint 2 visibility\) is -1; allowed: 0"),
    (_keypoint(8, 2.5), r"keypoints\[8\] \(joint 3 visibility\) is 2.5; allowed: 0"),
    (_keypoint(0, "12"), r"keypoints\[0\] \(joint 1 x\) is '12'; allowed: a finite number"),
    (_set("bbox", ["1", 2, 3, 4]), r"bbox \['1', 2, 3, 4\]; allowed: \[x, y, width, height\], 4 finite numbers"),
    (_set("bbox", [10, 10, -5, 20]), r"bbox \[10, 10, -5, 20\] has a negative width or height"),
    (_set("area", "big"), r"area 'big'; allowed: a finite number"),
], ids=["length-50", "visibility-7", "visibility-minus-1", "visibility-2.5", "string-x", "string-bbox",
        "negative-bbox", "string-area"])
def test_bad_pose_annotations_name_file_annotation_and_field(coco, tmp_path, edit, message):
    ann = _edited(coco, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as e:
        CocoPersons(ann, coco / "val2017")
    text = str(e.value)
    assert text.startswith(f"annotations: {ann}: annotation id 2000 (image id 200): ") and "\n" not in text


def _detections(tmp_path: Path, dets) -> Path:
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    return path


@pytest.mark.parametrize("det, message", [
    ({"bbox": [10, 10, -5, -5], "score": 0.9}, r"bbox \[10, 10, -5, -5\] has width -5 and height -5; allowed: width > 0 and height > 0"),
    ({"bbox": [10, 10, float("nan"), 5], "score": 0.9}, r"4 finite numbers"),
    ({"bbox": [10, 10, 20, 20], "score": "0.9"}, r"score '0.9'; allowed: a finite number"),
    ({"bbox": "10 10 20 20", "score": 0.9}, r"bbox '10 10 20 20'; allowed"),
    ({"bbox": [10, 10, 20, 20], "score": 0.9, "category_id": "person"}, r"category_id 'person'; allowed: a whole"),
], ids=["negative", "nan", "string-score", "string-bbox", "string-category"])
def test_bad_detector_boxes_for_pose_eval_name_the_detection(coco, tmp_path, det, message):
    path = _detections(tmp_path, [{"image_id": 200, "category_id": 1, "bbox": [1, 1, 50, 50], "score": 1.0},
                                  {"image_id": 200, "category_id": 1, **det}])
    with pytest.raises(ValueError, match=message) as e:
        CocoPersons(coco / "annotations" / "person_keypoints_val2017.json", coco / "val2017", boxes=str(path))
    assert str(e.value).startswith(f"boxes: {path}: detection 1 (image id 200): ")


def test_a_detector_box_far_outside_is_clipped_and_counted(coco, tmp_path):
    path = _detections(tmp_path, [{"image_id": 200, "category_id": 1, "bbox": [-1e9, -1e9, 2e9, 2e9], "score": 0.9},
                                  {"image_id": 200, "category_id": 1, "bbox": [1e9, 1e9, 10, 10], "score": 0.9}])
    raw = CocoPersons(coco / "annotations" / "person_keypoints_val2017.json", coco / "val2017", boxes=str(path))
    assert [i["box"] for i in raw.instances] == [[0.0, 0.0, 199.0, 179.0]]
    assert {k.split(" (")[0]: v for k, v in raw.dropped.items()} == {"box empty or outside the image": [200]}


# ---------------------------------------------------------------- pose predict --person-boxes
@pytest.mark.parametrize("box, message", [
    ([10, 10, -5, -5], r"'photo0.png' box 0: \[x, y, w, h\] \[10, 10, -5, -5\] has width -5 and height -5"),
    ([float("nan"), 10, 5, 5], r"'photo0.png' box 0: \[x, y, w, h\] \[nan, 10, 5, 5\]; allowed: .*4 finite numbers"),
    ([10, 10, 5, 5, "high"], r"'photo0.png' box 0: score 'high'; allowed: a finite number"),
    ([10, "10", 5, 5], r"'photo0.png' box 0: \[x, y, w, h\] \[10, '10', 5, 5\]; allowed"),
], ids=["negative", "nan", "string-score", "string-coordinate"])
def test_predict_person_boxes_are_checked_as_eval_checks_them(tmp_path, box, message):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"photo0.png": [box]}))
    with pytest.raises(ValueError, match=message) as e:
        read_box_file(path)
    assert str(e.value).startswith(f"--person-boxes: {path}: ")


def test_predict_with_huge_or_bad_person_boxes(pose_run, tmp_path, capsys):
    _, ckpt = pose_run
    folder = photos(tmp_path / "p", n=1, size=(96, 128))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"photo0.png": [[0, 0, 1e9, 1e9, 0.9], [500, 500, 10, 10]]}))
    code, out, err = run(["predict", "--checkpoint", ckpt, folder / "photo0.png", "--person-boxes", boxes, "--json",
                          "--no-progress"], capsys)
    assert code == 0, err
    result = json.loads(out)["results"][0]
    assert (result["boxes_clipped"], result["boxes_outside"]) == (1, 1) and len(result["persons"]) == 1
    person = result["persons"][0]
    assert person["box"] == [0.0, 0.0, 95.0, 127.0]
    joints = np.array(person["keypoints"], dtype=float)
    assert np.isfinite(joints).all() and (np.abs(joints[:, :2]) < 200).all()  # not 5e8 pixels away
    boxes.write_text('{"photo0.png": [[10, 10, NaN, 5]]}')  # what json.dumps writes for a NaN
    code, _, err = run(["predict", "--checkpoint", ckpt, folder / "photo0.png", "--person-boxes", boxes], capsys)
    one_line_error(err, "--person-boxes:", str(boxes), "'photo0.png' box 0", "4 finite numbers")
    assert code == 2


# ---------------------------------------------------------------- image sizes against their entries
def _det_split(tmp_path: Path, real: tuple[int, int]) -> Path:
    (tmp_path / "train").mkdir()
    Image.new("RGB", real, (90, 90, 90)).save(tmp_path / "train" / "a.png")
    ann = tmp_path / "instances_train.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [{"id": 7, "image_id": 1, "bbox": [30, 30, 20, 20], "category_id": 1},
                        {"id": 8, "image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 1}],
        "categories": [{"id": 1, "name": "a"}]}))
    return ann


def test_detection_image_smaller_than_its_entry_is_read_at_its_real_size(tmp_path, caplog):
    ann = _det_split(tmp_path, real=(1, 1))
    raw = CocoDetection(ann, tmp_path / "train", train=True)
    with caplog.at_level(logging.WARNING, "tdaf.detection"):
        (img, target), image_id, _ = raw.load(0)
        raw.load(0)
    assert img.size == (1, 1) and target["boxes"].tolist() == [[0.0, 0.0, 1.0, 1.0]]  # the box at 30,30 is outside
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "image id 1 is 1x1 but instances_train.json says 64x64" in warnings[0]
    assert "1 box(es) kept within it, 1 outside it dropped" in warnings[0]
    strict = CocoDetection(ann, tmp_path / "train", train=True, strict=True)
    sample, image_id, reason = strict.load(0)
    assert sample is None and "the image is 1x1 but instances_train.json says 64x64; --strict refuses it" in reason


def test_strict_eval_refuses_an_image_whose_size_contradicts_its_entry(detection_run, tmp_path, capsys, caplog):
    import shutil

    scenes, ckpt = detection_run
    copy = tmp_path / "scenes"
    shutil.copytree(scenes, copy)
    Image.new("RGB", (1, 1)).save(copy / "val" / "000000.png")
    base = ["eval", "--checkpoint", ckpt, "--data-dir", copy, "--workers", "0", "--no-progress",
            "--detections", tmp_path / "d.json"]
    code, _, err = run([*base, "--strict"], capsys)
    one_line_error(err, "000000.png", "the image is 1x1 but instances_val.json says 64x64; --strict refuses it")
    assert code == 2 and not (tmp_path / "d.json").exists()
    with caplog.at_level(logging.WARNING, "tdaf.detection"):
        code, out, err = run([*base, "--json"], capsys)
    assert code == 0 and "is 1x1 but instances_val.json says 64x64: read at its real size" in caplog.text


def test_pose_image_smaller_than_its_entry_warns_or_is_refused_under_strict(coco, caplog):
    import shutil

    root = coco.parent / "coco_small"
    if not root.exists():
        shutil.copytree(coco, root)
        Image.new("RGB", (100, 90)).save(root / "val2017" / "000000000200.jpg")
    ann = root / "annotations" / "person_keypoints_val2017.json"
    raw = CocoPersons(ann, root / "val2017")
    with caplog.at_level(logging.WARNING, "tdaf.pose"):
        (img, inst), _, _ = raw.load(0)
    assert img.size == (100, 90) and inst["box"][0] + inst["box"][2] <= 99
    assert "image id 200 is 100x90 but person_keypoints_val2017.json says 200x180" in caplog.text
    sample, _, reason = CocoPersons(ann, root / "val2017", strict=True).load(0)
    assert sample is None and "--strict refuses it" in reason


def test_detection_image_entries_with_bad_sizes_or_crowd_flags_are_named(tmp_path):
    ann = _det_split(tmp_path, real=(64, 64))
    data = json.loads(ann.read_text())
    for edit, message in (
        (lambda d: d["images"][0].update(width="64"), r"image id 1: width '64'; allowed: a whole number >= 1"),
        (lambda d: d["images"][0].update(height=0), r"image id 1: height 0; allowed: a whole number >= 1"),
        (lambda d: d["annotations"][0].update(iscrowd="no"), r"annotation id 7: iscrowd 'no'; allowed: 0 or 1"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, float("nan"), 2]), r"annotation id 7: bbox \[1, 1, nan, 2\] is not \[x, y, width, height\] \(4 finite numbers\)"),
    ):
        bad = json.loads(json.dumps(data))
        edit(bad)
        ann.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message) as e:
            CocoDetection(ann, tmp_path / "train", train=True)
        assert str(e.value).startswith(f"annotations: {ann}: ")


# ---------------------------------------------------------------- a batch BatchNorm cannot train on
def test_video_batch_of_one_is_refused_before_training(video_run, tmp_path, capsys):
    kinetics, _ = video_run
    out = tmp_path / "run"
    code, _, err = run(["train", "--task", "video", "--model", "tdaf_r3d_resnet10_w16", "--data", "kinetics",
                        "--data-dir", kinetics, "--input-size", "32", "--epochs", "1", "--batch-size", "1",
                        "--workers", "0", "--no-progress", "--no-tensorboard", "--out", out], capsys)
    one_line_error(err, "--batch-size: got 1", "one value per channel", "the smallest --batch-size that works is 2")
    assert code == 2 and not out.exists()
