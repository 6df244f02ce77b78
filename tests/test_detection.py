"""The detection task (paper §4.2): FCOS on plain / TDAF ResNets, COCO-format data, COCOeval."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection import fcos_resnet50_fpn as tv_fcos_resnet50_fpn
from torchvision.models.resnet import resnet18 as tv_resnet18

import tdaf
from tdaf.cli.main import main
from tdaf.data import Batch
from tdaf.detection import (
    CocoDetection, CocoEvaluator, backbone_of, coco_eval, collate_detection, torchvision_fcos_state_dict,
    write_digit_scenes,
)
from tdaf.detection.data import apply_pair, eval_transform
from tdaf.engine.checkpoint import checkpoint_payload, model_from_checkpoint
from tdaf.engine.evaluate import evaluate_checkpoint
from tdaf.engine.trainer import train
from tdaf.io.files import atomic_save
from tdaf.layers.mfbn import FrozenMultiFlowBatchNorm, MultiFlowBatchNorm

SMALL = dict(min_size=64, max_size=64)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_scenes(tmp_path_factory.mktemp("d") / "scenes", train_images=6, val_images=4, size=64,
                              digits=(1, 3), scale=(16, 28))


def _coco(tmp_path: Path, images: list[dict], annotations: list[dict], make_images: bool = True) -> Path:
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    if make_images:
        from PIL import Image

        for im in images:
            Image.new("RGB", (im["width"], im["height"]), (40, 40, 40)).save(tmp_path / "train" / im["file_name"])
    ann = tmp_path / "annotations" / "instances_train.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}))
    return ann


def test_digit_scenes_are_coco_with_exact_boxes(scenes: Path) -> None:
    data = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 6 and {c["id"] for c in data["categories"]} == set(range(1, 11))
    raw = CocoDetection(scenes / "annotations" / "instances_train.json", scenes / "train", train=True)
    (img, target), image_id, _ = raw.load(0)
    pixels = torch.from_numpy(np.asarray(img.convert("L")).astype(np.int64))
    for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
        assert pixels[y1:y2, x1:x2].max() > 0  # ink inside every box
    ink = pixels > 0.25 * 255
    inside = torch.zeros_like(ink)
    for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
        inside[y1:y2, x1:x2] = True
    assert not (ink & ~inside).any()  # and no strong ink outside the boxes
    again = write_digit_scenes(scenes.parent / "again", train_images=6, val_images=4, size=64, digits=(1, 3),
                               scale=(16, 28))
    assert (again / "annotations" / "instances_val.json").read_text() == \
        (scenes / "annotations" / "instances_val.json").read_text()  # same arguments, same set
    with pytest.raises(ValueError, match="not empty"):
        write_digit_scenes(scenes)


def test_digit_scene_boxes_are_tight_and_splits_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from tdaf.detection import data as detection_data

    for split in ("train", "val"):  # each box touches its digit's ink on all four sides
        raw = json.loads((write_digit_scenes(tmp_path / f"s{split}", train_images=8, val_images=8, seed=3)
                          / "annotations" / f"instances_{split}.json").read_text())
        boxes = 0
        for im in raw["images"]:
            pixels = np.asarray(Image.open(tmp_path / f"s{split}" / split / im["file_name"])).astype(np.int64)
            for a in (a for a in raw["annotations"] if a["image_id"] == im["id"]):
                x, y, w, h = (int(v) for v in a["bbox"])
                ink = pixels[y:y + h, x:x + w] > 0.25 * pixels[y:y + h, x:x + w].max()
                assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any(), a
                boxes += 1
        assert boxes >= 8
    one = json.loads((write_digit_scenes(tmp_path / "one", train_images=8, val_images=8, seed=3, one_category=True)
                      / "annotations" / "instances_val.json").read_text())
    assert one["categories"] == [{"id": 1, "name": "digit", "supercategory": "digit"}]
    assert [a["bbox"] for a in one["annotations"]] == [a["bbox"] for a in raw["annotations"]]  # the same scenes
    assert {a["category_id"] for a in one["annotations"]} == {1} != {a["category_id"] for a in raw["annotations"]}
    # stand-in digits: every training digit a flat 100, every test digit a flat 200
    fake = {split: (np.full((12, 32, 32), value, np.uint8), np.arange(12) % 10)
            for split, value in (("train", 100), ("val", 200))}
    monkeypatch.setattr(detection_data, "digits_pixels", lambda split: fake[split])
    root = write_digit_scenes(tmp_path / "fake", train_images=5, val_images=5)
    for split, value in (("train", 100), ("val", 200)):
        values = set()
        for f in sorted((root / split).glob("*.png")):
            values |= set(np.unique(np.asarray(Image.open(f))).tolist())
        assert values == {0, value}  # only that split's digits (patches never overlap)


def test_annotation_problems_are_counted_or_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = [{"id": 1, "file_name": "a.png", "width": 50, "height": 40},
              {"id": 2, "file_name": "b.png", "width": 50, "height": 40},
              {"id": 3, "file_name": "missing.png", "width": 50, "height": 40}]
    anns = [
        {"id": 10, "image_id": 1, "bbox": [40, 30, 20, 20], "category_id": 1},  # reaches outside: clipped
        {"id": 11, "image_id": 1, "bbox": [5, 5, 0, 10], "category_id": 3},  # zero width: dropped
        {"id": 12, "image_id": 1, "bbox": [60, 5, 10, 10], "category_id": 3},  # wholly outside: dropped
        {"id": 13, "image_id": 1, "bbox": [1, 1, 10, 10], "category_id": 3, "iscrowd": 1},  # crowd: not a target
        {"id": 14, "image_id": 3, "bbox": [1, 1, 10, 10], "category_id": 1},
    ]
    ann = _coco(tmp_path, images[:2], anns)
    ann.write_text(json.dumps({**json.loads(ann.read_text()), "images": images}))
    with caplog.at_level(logging.INFO, "tdaf.detection"):
        raw = CocoDetection(ann, tmp_path / "train", train=True)
    assert raw.counts == {"boxes clipped to the image": 1, "zero-area or out-of-image boxes dropped": 2,
                          "crowd boxes left out of the targets": 1, "images without boxes left out of training": 1}
    assert "2 zero-area or out-of-image boxes dropped (annotation id 11, annotation id 12)" in caplog.text
    assert f"{ann}: 1 images without boxes left out of training (image id 2)" in caplog.text
    assert raw.ids == [1, 3]  # image 2 has no box; the validation split would keep it
    assert CocoDetection(ann, tmp_path / "train", train=False).ids == [1, 2, 3]
    (img, target), _, _ = raw.load(0)
    assert target["boxes"].tolist() == [[40.0, 30.0, 50.0, 40.0]] and target["labels"].tolist() == [1]
    assert len(raw.gt["annotations"]) == 5  # COCOeval sees the file's boxes, crowd included
    sample, image_id, name = raw.load(1)  # unreadable image: skipped and named, not raised
    assert sample is None and image_id == 3 and "missing.png" in name and "image id 3" in name
    ds = tdaf.data.TransformedDataset(raw, apply_pair(eval_transform()), seeded=False)
    batch = collate_detection([ds[0], ds[1]])
    assert isinstance(batch, Batch) and len(batch.inputs) == 1 and len(batch.skipped) == 1

    bad = [dict(anns[0], category_id=7)]
    _coco(tmp_path, images[:1], bad, make_images=False)
    with pytest.raises(ValueError, match=r"instances_train.json: annotation id 10: category_id 7 is not in categories"):
        CocoDetection(ann, tmp_path / "train", train=True)
    _coco(tmp_path, images[:1], [{"id": 20, "image_id": 1, "category_id": 1}], make_images=False)
    with pytest.raises(ValueError, match=r"annotation id 20: missing field\(s\) bbox"):
        CocoDetection(ann, tmp_path / "train", train=True)
    _coco(tmp_path, [{"id": 5, "file_name": "x.png"}], [], make_images=False)
    with pytest.raises(ValueError, match=r"images\[0\]: missing field\(s\) width, height"):
        CocoDetection(ann, tmp_path / "train", train=True)


def test_predictions_equal_to_the_ground_truth_score_ap_1(scenes: Path) -> None:
    raw = CocoDetection(scenes / "annotations" / "instances_val.json", scenes / "val", train=False)
    perfect, wrong = CocoEvaluator(raw.gt), CocoEvaluator(raw.gt)
    for i in range(len(raw)):
        (_, target), image_id, _ = raw.load(i)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        out = {"boxes": boxes, "labels": target["labels"], "scores": torch.ones(len(boxes))}
        perfect.update([out], [{"image_id": image_id}])
        wrong.update([dict(out, labels=target["labels"] % 10 + 1)], [{"image_id": image_id}])
    for ev in (perfect, wrong):
        ev.gather()
    result = perfect.compute()
    assert result["AP"] == pytest.approx(1.0) and result["AP50"] == pytest.approx(1.0)
    assert wrong.compute()["AP"] == pytest.approx(0.0)  # every label shifted: nothing matches
    assert math.isnan(coco_eval(raw.gt, [], [1])["AP"]) or coco_eval(raw.gt, [], [1])["AP"] == 0.0


def test_param_overhead_is_the_anars_and_flows_do_not_add_params() -> None:
    with torch.device("meta"):
        plain = tdaf.create_model("fcos_resnet50_fpn", num_classes=91)
        tv = tv_fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
        counts = {}
        for anar in ("anar3", "anar5"):
            for flows in (3, 4):
                m = tdaf.create_model("tdaf_fcos_resnet50_fpn", num_classes=91, flows=flows, anar=anar)
                anars = sum(p.numel() for p in backbone_of(m).attention.parameters())
                counts[anar, flows] = sum(p.numel() for p in m.parameters())
                assert counts[anar, flows] - sum(p.numel() for p in plain.parameters()) == anars > 0
        frozen = tdaf.create_model("fcos_resnet50_fpn", num_classes=91, frozen_bn=True)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(plain) == n(tv)  # torchvision's FCOS, with trainable BN (no backbone weights)
    assert n(frozen) == 32_269_600  # torchvision's fcos_resnet50_fpn weights: "num_params" (frozen BN)
    assert counts["anar3", 3] == counts["anar3", 4] and counts["anar5", 3] == counts["anar5", 4]
    assert counts["anar5", 3] > counts["anar3", 3]


def test_same_detections_as_torchvision_fcos_given_the_same_weights() -> None:
    torch.manual_seed(0)
    tv = tv_fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, score_thresh=0.0, **SMALL).eval()
    ours = tdaf.create_model("fcos_resnet50_fpn", num_classes=5, score_thresh=0.0, **SMALL).eval()
    ours.load_state_dict(torchvision_fcos_state_dict(tv.state_dict()))
    x = [torch.rand(3, 60, 70)]
    with torch.no_grad():
        a, b = tv(x)[0], ours(x)[0]
    assert len(a["boxes"]) > 0
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", ["fcos_resnet18_fpn", "tdaf_fcos_resnet18_fpn"])
def test_every_box_output_starts_alive(name: str) -> None:
    """The box branch is relu(conv(x)): at torchvision's bias 0 about half of its outputs start
    cut to zero, with no gradient; from bias 1 every side of every box starts positive, one
    anchor size from its location, in the plain and the TDAF detector alike."""
    from tdaf.detection.models import BOX_BIAS_INIT

    torch.manual_seed(0)
    x = [torch.rand(3, 64, 64) for _ in range(2)]
    outputs = {}
    for bias in (BOX_BIAS_INIT, 0.0):
        model = tdaf.create_model(name, num_classes=2, box_bias_init=bias, min_size=64, max_size=64)
        head = model.head.regression_head
        assert torch.equal(head.bbox_reg.bias, torch.full_like(head.bbox_reg.bias, bias))
        images, _ = model.transform(x)
        features = list(model.backbone(images.tensors).values())
        with torch.no_grad():
            outputs[bias] = torch.cat([head.bbox_reg(head.conv(f)).flatten() for f in features])
    assert BOX_BIAS_INIT == 1.0 and bool((outputs[1.0] > 0).all())
    assert 0.2 < (outputs[0.0] <= 0).float().mean() < 0.8  # torchvision's start: many outputs cut to zero
    with pytest.raises(ValueError, match="box_bias_init"):
        tdaf.create_model(name, num_classes=2, box_bias_init=float("nan"))
    with pytest.raises(ValueError, match="box_bias_init"):
        tdaf.create_model(name, num_classes=2, box_bias_init="1")


def test_one_flow_equals_the_plain_detector_and_backbone_init(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18().state_dict(), weights)
    plain = tdaf.create_model("fcos_resnet18_fpn", num_classes=4, backbone_weights=weights, score_thresh=0.0, **SMALL)
    one = tdaf.create_model("tdaf_fcos_resnet18_fpn", num_classes=4, flows=1, backbone_weights=weights,
                            score_thresh=0.0, **SMALL)
    one.load_state_dict(plain.state_dict())
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = plain.eval()(x)[0], one.eval()(x)[0]
    assert len(a["boxes"]) > 0 and torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    # torchvision's recipe with backbone weights: frozen BN statistics, stem and layer1 frozen
    assert plain.pretrained_cfg["frozen_bn"] and plain.pretrained_cfg["trainable_layers"] == 3
    stages = backbone_of(one)
    assert all(isinstance(m, FrozenMultiFlowBatchNorm) for m in stages.stages.modules() if "Norm" in type(m).__name__)
    grads = {n: p.requires_grad for n, p in stages.named_parameters()}
    assert not grads["stages.0.conv1.weight"] and not grads["stages.0.layer1.0.conv1.weight"]
    assert grads["stages.1.0.conv1.weight"] and grads["stages.3.0.conv1.weight"]

    # a TDAF classification checkpoint initialises the TDAF detector's backbone, ANARs included
    cls = tdaf.create_model("tdaf_resnet18", num_classes=10)
    ckpt = tmp_path / "cls.pt"
    atomic_save(checkpoint_payload("tdaf_resnet18", {"num_classes": 10}, cls.state_dict()), ckpt)
    det = tdaf.create_model("tdaf_fcos_resnet18_fpn", num_classes=4, backbone_weights=ckpt)
    r2dns = backbone_of(det)
    assert torch.equal(r2dns.attention[0].state_dict()[next(iter(r2dns.attention[0].state_dict()))],
                       cls.backbone.attention[0].state_dict()[next(iter(cls.backbone.attention[0].state_dict()))])
    assert torch.equal(r2dns.stages[2][0].conv1.weight, cls.backbone.stages[2][0].conv1.weight)
    assert any(isinstance(m, MultiFlowBatchNorm) for m in r2dns.attention.modules())  # ANAR BN still trains
    with pytest.raises(ValueError, match=r"cls.pt holds tdaf_resnet18 .* does not fit the backbone of fcos_resnet50"):
        tdaf.create_model("fcos_resnet50_fpn", backbone_weights=ckpt)


def test_degenerate_target_box_is_refused_as_torchvision_does() -> None:
    model = tdaf.create_model("fcos_resnet18_fpn", num_classes=3, **SMALL).train()
    with pytest.raises(AssertionError, match="positive height and width"):  # torchvision's own check
        model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[10.0, 10.0, 10.0, 20.0]]),
                                         "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="only TDAF models take these"):
        tdaf.create_model("fcos_resnet18_fpn", flows=3)
    assert "fcos_resnet50_fpn" not in tdaf.list_models(task="classification")
    assert "tdaf_fcos_resnet101_fpn" in tdaf.list_models(task="detection")


def test_train_eval_predict_end_to_end(scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    result = train({"task": "detection", "model": "tdaf_fcos_resnet18_fpn", "flows": 2, "data": "digit_scenes",
                    "data_dir": str(scenes), "input_size": 64, "epochs": 1, "batch_size": 2, "lr": 0.01,
                    "lr_batch": 16, "out": str(out), "progress": False, "tensorboard": False, "workers": 0})
    row = result["history"][0]
    for k in ("train_loss", "train_classification", "train_bbox_regression", "train_bbox_ctrness"):
        assert math.isfinite(row[k]) and row[k] > 0, k
    assert 0.0 <= row["val_AP"] <= 1.0 and len(result["steps"]) == 3  # 6 images, batch 2
    model, meta = model_from_checkpoint(out / "last.pt")
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["min_size"] == [64]

    res = evaluate_checkpoint(out / "last.pt", progress=False)  # finds the run's data dir itself
    assert res is not None and res["images"] == 4 and res["data_dir"] == str(scenes.resolve()) and res["AP"] == pytest.approx(row["val_AP"])
    dets = json.loads(Path(res["detections"]).read_text())
    assert len(dets) == res["detections_count"]
    assert all({"image_id", "bbox", "score", "category_id"} <= set(d) for d in dets)

    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--json", "--detections", str(tmp_path / "d.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["AP"] == pytest.approx(res["AP"]) and (tmp_path / "d.json").is_file()

    pics = tmp_path / "pics"
    assert main(["predict", "--checkpoint", str(out / "last.pt"), str(scenes / "val" / "000000.png"),
                 "--out-dir", str(pics), "--score-thresh", "0", "--attention", "--json", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"][0]["detections"]
    assert (pics / "000000_pred.png").is_file() and (pics / "000000_attention.png").is_file()
    assert json.loads((pics / "predictions.json").read_text())["results"][0]["file"].endswith("000000.png")
    assert main(["predict", "--checkpoint", str(out / "last.pt"), str(scenes / "val"), "--topk", "3"]) == 2


CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "detection"


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("[!_]*.yaml")), ids=str)
def test_every_detection_config_validates(path: str) -> None:
    from tdaf.detection import DetectionTask
    from tdaf.engine.config import TrainConfig, load_config_file

    values = load_config_file(CONFIGS / path)
    cfg = TrainConfig.from_dict(values, path)
    DetectionTask().check_config(cfg, path)
    base = {"coco": "_coco_fcos_2x", "digit": "_digit_scenes_recipe"}[path.split("_")[0]]
    recipe = load_config_file(CONFIGS / f"{base}.yaml")  # a baseline and its TDAF model differ only in the model
    assert {k: v for k, v in values.items() if k in recipe} == recipe
    assert set(values) - set(recipe) <= {"model", "flows", "anar", "out", "pretrained"}
    assert cfg.model.startswith("tdaf_") == (cfg.flows is not None) and cfg.task == "detection"
    if base == "_coco_fcos_2x":  # the 2x schedule: lr 0.01 at 16 images, x0.1 at 16 and 22 of 24 epochs
        assert (cfg.base_lr, cfg.epochs, cfg.milestones, cfg.recipe) == (0.01, 24, [16, 22], "fcos_ms")
