"""Pose estimation (paper §4.3): SimpleBaseline and its TDAF head on COCO keypoints.

Every test writes its own tiny COCO keypoint set (real annotation json, real image files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tdaf
from tdaf.engine.checkpoint import model_from_checkpoint
from tdaf.engine.config import TrainConfig
from tdaf.engine.trainer import Trainer
from tdaf.pose import KeypointEvaluator, PoseTask, TopDownTransform, decode_heatmaps, encode_heatmaps, flip_heatmaps
from tdaf.pose.codec import affine_matrix, apply_affine, box_to_center_scale, invert_affine
from tdaf.pose.data import Augment, CocoPersons, pose_collate
from tdaf.pose.metrics import coco_keypoint_stats, heatmaps_to_keypoints, oks_nms

NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
         "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
         "right_ankle"]
SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
            [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
# A standing person on the 4-pixel grid of a 96x128 crop (heat-map pixels of a 24x32 map).
GRID = [(12, 5), (13, 4), (11, 4), (14, 5), (10, 5), (15, 9), (9, 9), (17, 13), (7, 13), (18, 17), (6, 17), (14, 17),
        (10, 17), (14, 22), (10, 22), (14, 27), (10, 27)]
HW = (128, 96)


def person(center: tuple[int, int], vis: int = 2) -> tuple[list[float], list[float]]:
    """A box whose 128x96 crop has scale 1 and whose joints fall on heat-map pixel centres."""
    cx, cy = center
    kpts = []
    for i, j in GRID:
        kpts += [cx + 4 * i - 48, cy + 4 * j - 64, vis]
    box = [cx - 38.4, cy - 51.2, 76.8, 102.4]
    return box, kpts


def write_coco(root: Path, bad: bool = False) -> Path:
    """COCO-2017 layout: two splits, two 200x180 images each with one person (white dots on
    its joints); ``bad`` adds a crowd, a person with no labelled joint, a box outside the
    image and an image whose file is missing to the training split."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, base in (("train2017", 100), ("val2017", 200)):
        (root / split).mkdir(exist_ok=True)
        images, anns = [], []
        for k in range(2):
            img_id = base + k
            center = (90 + 4 * k, 86)
            box, kpts = person(center)
            arr = rng.integers(0, 60, size=(180, 200, 3), dtype=np.uint8)
            for x, y in zip(kpts[0::3], kpts[1::3]):
                arr[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 255
            Image.fromarray(arr).save(root / split / f"{img_id:012d}.jpg", quality=95)
            images.append(dict(id=img_id, file_name=f"{img_id:012d}.jpg", width=200, height=180))
            anns.append(dict(id=10 * img_id, image_id=img_id, category_id=1, iscrowd=0, bbox=box,
                             area=box[2] * box[3], keypoints=kpts, num_keypoints=17))
        if bad and split == "train2017":
            box, kpts = person((90, 86), vis=0)
            anns.append(dict(id=901, image_id=base, category_id=1, iscrowd=0, bbox=box, area=100.0, keypoints=kpts,
                             num_keypoints=0))
            box, kpts = person((90, 86))
            anns.append(dict(id=902, image_id=base, category_id=1, iscrowd=0, bbox=[500, 400, 30, 30], area=900.0,
                             keypoints=kpts, num_keypoints=17))
            anns.append(dict(id=903, image_id=base, category_id=1, iscrowd=1, bbox=box, area=100.0, keypoints=kpts,
                             num_keypoints=17))
            images.append(dict(id=999, file_name="missing.jpg", width=200, height=180))
            anns.append(dict(id=904, image_id=999, category_id=1, iscrowd=0, bbox=box, area=box[2] * box[3],
                             keypoints=kpts, num_keypoints=17))
        cats = [dict(id=1, name="person", supercategory="person", keypoints=NAMES, skeleton=SKELETON)]
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(
            json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco"), bad=True)


def _val(root: Path, **kwargs) -> CocoPersons:
    return CocoPersons(root / "annotations" / "person_keypoints_val2017.json", root / "val2017", **kwargs)


# ---------------------------------------------------------------- targets and decoding
def test_target_heatmaps_peak_at_the_joints_and_decode_back_within_a_pixel():
    rng = np.random.default_rng(1)
    joints = rng.uniform([2, 2], [94, 126], size=(17, 2))
    vis = np.full(17, 2.0)
    vis[3] = 0
    heatmaps, weights = encode_heatmaps(joints, vis, (24, 32), stride=4)
    assert heatmaps.shape == (17, 32, 24) and weights[3] == 0 and heatmaps[3].max() == 0
    for j in range(17):
        if j == 3:
            continue
        y, x = np.unravel_index(heatmaps[j].argmax(), heatmaps[j].shape)
        assert (x, y) == tuple((joints[j] / 4 + 0.5).astype(int))
        assert heatmaps[j].max() == pytest.approx(1.0)
    coords, scores = decode_heatmaps(torch.from_numpy(heatmaps)[None], stride=4)
    err = np.abs(coords[0].numpy() - joints)[weights > 0] / 4  # in heat-map pixels
    assert err.max() < 1.0
    # a joint off the map gets weight 0, not a clipped Gaussian
    _, w = encode_heatmaps(np.array([[200.0, 50.0]]), np.array([2.0]), (24, 32), stride=4)
    assert w[0] == 0


def test_affine_crop_round_trip_with_rotation_scale_and_flip():
    img = np.zeros((180, 200, 3), dtype=np.uint8)
    joint = np.array([70.0, 60.0])
    img[58:63, 68:73] = 255
    kpts = np.zeros((17, 3))
    kpts[1] = [*joint, 2]  # left eye only
    inst = dict(image_id=1, box=[40, 30, 80, 110], score=1.0, area=8800.0, keypoints=kpts)
    info = tdaf.pose.data.keypoint_info(dict(keypoints=NAMES, skeleton=SKELETON), "test")
    t = TopDownTransform(HW, info, Augment(rotation_prob=1.0, flip_prob=1.0, half_body_prob=0.0), mean=(0, 0, 0),
                         std=(1, 1, 1))
    torch.manual_seed(3)
    x, target = t((Image.fromarray(img), inst))
    # flipped: the left eye is now the right eye (channel 2), at the brightest spot of the crop
    assert target["weights"][2] == 1 and target["weights"][1] == 0
    crop_joint = target["keypoints"][2, :2].numpy()
    bright = np.argwhere(x[0].numpy() > 0.5)
    assert np.abs(bright.mean(axis=0)[::-1] - crop_joint).max() < 1.0
    # heat-map -> crop -> image: back at the joint within one heat-map pixel (in image pixels)
    coords, _ = decode_heatmaps(target["heatmaps"][None], stride=4)
    m = affine_matrix(target["center"].numpy(), target["scale"].numpy(), 0.0, (96, 128))
    assert not np.allclose(m, affine_matrix(target["center"].numpy(), target["scale"].numpy(), 10.0, (96, 128)))
    crop_to_image = invert_affine(affine_matrix(*box_to_center_scale(inst["box"], 0.75), 0.0, (96, 128)))
    assert np.allclose(apply_affine(apply_affine(joint, invert_affine(crop_to_image)), crop_to_image), joint)
    # the augmented crop has rotation and flip: compare in crop space, where decoding happens
    assert np.abs(coords[0, 2].numpy() - crop_joint).max() <= 0.75 * 4 + 1e-6


def test_ground_truth_boxes_decode_to_the_annotated_joints(coco):
    raw = _val(coco)
    t = TopDownTransform(HW, raw.info)
    for i in range(len(raw)):
        (img, inst), _, _ = raw.load(i)
        _, target = t((img, inst))
        kp, conf = heatmaps_to_keypoints(target["heatmaps"][None], target["center"][None], target["scale"][None], 4)
        assert np.abs(kp[0] - inst["keypoints"][:, :2]).max() < 1e-6
        assert conf.min() == pytest.approx(1.0)


# ---------------------------------------------------------------- evaluation
def _perfect_evaluator(raw: CocoPersons, nms: bool = False) -> KeypointEvaluator:
    t = TopDownTransform(HW, raw.info)
    ev = KeypointEvaluator(raw.coco, raw.category_id, raw.info.sigmas, 4, nms=nms)
    items = [(t(raw.load(i)[0]), i, "x") for i in range(len(raw))]
    images, targets, _ = pose_collate(items)
    ev.update(targets["heatmaps"], targets)
    return ev


def test_cocoeval_end_to_end_perfect_prediction_scores_ap_1(coco):
    raw = _val(coco)
    ev = _perfect_evaluator(raw)
    ev.gather()
    stats = ev.compute()
    assert stats["AP_M"] == pytest.approx(1.0) and np.isnan(stats["AP_L"])  # medium persons only: no AP_L
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert stats["loss"] == 0.0
    # a wrong prediction scores less: every joint moved by 8 pixels
    res = ev.results()
    for r in res:
        r["keypoints"] = [v + 8 if i % 3 < 2 else v for i, v in enumerate(r["keypoints"])]
    assert coco_keypoint_stats(raw.coco, res)["AP"] < 0.5


def test_detector_boxes_unknown_ids_low_scores_and_oks_nms(coco, tmp_path):
    raw = _val(coco)
    gt = {a["image_id"]: a["bbox"] for a in raw.coco.anns.values()}
    dets = [dict(image_id=i, category_id=1, bbox=b, score=0.9) for i, b in gt.items()]
    dets.append(dict(image_id=200, category_id=1, bbox=[b + 0.3 for b in gt[200]], score=0.8))  # a duplicate
    dets.append(dict(image_id=12345, category_id=1, bbox=[0, 0, 50, 50], score=0.9))  # unknown image
    dets.append(dict(image_id=201, category_id=1, bbox=[0, 0, 50, 50], score=0.05))  # below the threshold
    dets.append(dict(image_id=201, category_id=2, bbox=[0, 0, 50, 50], score=0.9))  # not a person
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    det = _val(coco, boxes=str(path), score_thr=0.1)
    assert len(det) == 3
    assert [12345] in [ids for reason, ids in det.dropped.items() if "image id" in reason]
    assert any("score" in reason and ids == [201] for reason, ids in det.dropped.items())
    kpts = {a["image_id"]: np.reshape(a["keypoints"], (17, 3)) for a in raw.coco.anns.values()}
    for inst in det.instances:  # the detector's crops, with the true joints as the "prediction"
        inst["keypoints"] = kpts[inst["image_id"]]
    with_nms, without = _perfect_evaluator(det, nms=True), _perfect_evaluator(det, nms=False)
    assert len(with_nms.results()) == 2 and len(without.results()) == 3
    assert with_nms.compute()["AP"] == pytest.approx(1.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="boxes: .*bad.json.*COCO detection results"):
        _val(coco, boxes=str(bad))


def test_oks_sigmas_are_cocoevals():
    from pycocotools.cocoeval import Params

    assert np.allclose(tdaf.pose.data.COCO_SIGMAS, Params(iouType="keypoints").kpt_oks_sigmas)


def test_oks_nms_keeps_distinct_people():
    base = np.stack([np.array([4 * i for i, _ in GRID], float), np.array([4 * j for _, j in GRID], float),
                     np.ones(17)], axis=1)
    people = [dict(keypoints=base, score=0.9, area=1e4), dict(keypoints=base + [1, 0, 0], score=0.5, area=1e4),
              dict(keypoints=base + [300, 0, 0], score=0.4, area=1e4)]
    assert oks_nms(people, 0.9, np.array(tdaf.pose.data.COCO_SIGMAS)) == [0, 2]


def test_bad_annotations_are_skipped_and_counted_with_their_ids(coco):
    raw = CocoPersons(coco / "annotations" / "person_keypoints_train2017.json", coco / "train2017")
    assert len(raw) == 3  # two people, and the one of the missing image (skipped when loaded)
    drops = {k.split(" (")[0]: v for k, v in raw.dropped.items()}
    assert drops == {"no labelled joint": [901], "box empty or outside the image": [902]}
    missing = [i for i in range(len(raw)) if raw.instances[i]["image_id"] == 999][0]
    sample, _, name = raw.load(missing)
    assert sample is None and "missing.jpg" in name
    batch = pose_collate([(None, 0, name)])
    assert batch.inputs is None and batch.skipped == [name]


# ---------------------------------------------------------------- flip test
def test_flip_test_is_symmetric():
    pairs = [(1, 2), (3, 4)]
    h = torch.rand(2, 5, 8, 6)
    assert torch.equal(flip_heatmaps(flip_heatmaps(h, pairs, shift=False), pairs, shift=False), h)
    delta = torch.zeros(1, 5, 8, 6)
    delta[0, 1, 3, 1] = 1  # left eye at column 1
    back = flip_heatmaps(delta, pairs)
    assert back[0, 2, 3, 6 - 1 - 1 + 1] == 1 and back.sum() == 1  # right eye, mirrored, shifted one pixel right

    torch.manual_seed(0)
    model = tdaf.create_model("simplebaseline_resnet18", num_joints=5).eval()
    task = PoseTask(flip_test=True, flip_shift=False)
    task.info = tdaf.pose.KeypointInfo(["a"] * 5, [], pairs, [0], [0.1] * 5)
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        a = task.predict(model, x)
        b = task.predict(model, x.flip(-1))
    assert torch.allclose(flip_heatmaps(a, pairs, shift=False), b, atol=1e-6)


# ---------------------------------------------------------------- models
def test_flows_1_equals_the_plain_simplebaseline():
    torch.manual_seed(0)
    plain = tdaf.create_model("simplebaseline_resnet18").eval()
    one = tdaf.create_model("tdaf_simplebaseline_resnet18", flows=1).eval()
    one.load_state_dict(plain.state_dict())
    three = tdaf.create_model("tdaf_simplebaseline_resnet18", attention_init="random").eval()
    three.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        out = plain(x)
        assert out.shape == (2, 17, 32, 24)
        assert torch.allclose(one(x), out, atol=1e-6)
        assert (three(x) - out).abs().max() > 0.01 * out.abs().max()  # the attention changes the maps
    assert tdaf.model_cfg("tdaf_simplebaseline_resnet50")["task"] == "pose"
    assert "simplebaseline_resnet50" not in tdaf.list_models(task="classification")


def test_tdaf_head_runs_r2dns_over_the_deconvolutions_with_aligned_attention():
    model = tdaf.create_model("tdaf_simplebaseline_resnet18", anar="anar5").eval()
    assert isinstance(model.head, tdaf.R2DNS) and model.head.strides == [0.5] * 3 and len(model.head.attention) == 2
    with torch.no_grad(), model.head.record_attention() as maps:
        flows = model.head.forward_flows(model.backbone(torch.randn(1, 3, 256, 192))[-1])
    assert [tuple(o.shape[-2:]) for o in flows[-1]] == [(16, 12), (32, 24), (64, 48)]
    assert [tuple(o.shape[-2:]) for o in flows[0]] == [(4, 4)]  # C5 8x6 down-sampled twice: 2x2, then x2
    assert sorted(maps) == [(1, 2), (1, 3), (2, 3)]
    for (stage, flow), a in maps.items():
        assert a.shape[-2:] == flows[flow - 1][stage - 1].shape[-2:]


def test_backbone_weights_load_from_a_local_file(tmp_path):
    net = tdaf.create_model("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(torchvision_state(net), path)
    model = tdaf.create_model("tdaf_simplebaseline_resnet18", backbone_weights=str(path))
    assert torch.equal(model.backbone.stages[0].conv1.weight, net.backbone.stages[0].conv1.weight)
    with pytest.raises(ValueError, match="num_joints"):
        tdaf.create_model("simplebaseline_resnet18", num_joints=0)
    with pytest.raises(ValueError, match="only TDAF models"):
        tdaf.create_model("simplebaseline_resnet18", flows=3)


def torchvision_state(model) -> dict:
    """A TDAF classifier's plain weights in torchvision's ResNet layout."""
    from torchvision.models import resnet18

    ref = resnet18()
    own = model.state_dict()
    stem = {"conv1", "bn1"}
    out = {}
    for k in ref.state_dict():
        head = k.split(".")[0]
        if head in stem or head == "layer1":
            src = "backbone.stages.0." + k
        elif head.startswith("layer"):
            src = f"backbone.stages.{int(head[5:]) - 1}." + k.split(".", 1)[1]
        else:
            src = "head." + k
        out[k] = own[src]
    return out


# ---------------------------------------------------------------- training and the commands
def test_train_a_few_iterations_then_eval_and_predict_commands(coco, tmp_path, capsys):
    from tdaf.cli.main import main

    cfg = TrainConfig(task="pose", model="tdaf_simplebaseline_resnet18", data="coco", data_dir=str(coco),
                      input_size=128, epochs=1, batch_size=2, optimizer="adam", lr=1e-3, lr_batch=2, weight_decay=0.0,
                      workers=0, out=str(tmp_path / "run"), progress=False, tensorboard=False)
    result = Trainer(cfg).fit()
    row = result["history"][-1]
    assert np.isfinite(row["train_loss"]) and row["train_loss"] > 0 and row["skipped"] == 1  # the missing image
    assert 0.0 <= row["val_AP"] <= 1.0 and np.isfinite(row["val_loss"])
    model, meta = model_from_checkpoint(result["last"])
    assert meta["input_size"] == [3, 128, 96] and meta["keypoint_names"] == NAMES and model.head.flows == 3

    assert main(["eval", "--checkpoint", str(result["last"]), "--data-dir", str(coco), "--json",
                 "--workers", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["persons"] == 2 and out["flip_test"] and {"AP", "AP50", "AP75", "AP_M", "AP_L", "AR"} <= set(out)
    assert main(["eval", "--checkpoint", str(result["last"]), "--data-dir", str(coco), "--ten-crop"]) != 0
    assert "--ten-crop: only for classification checkpoints" in capsys.readouterr().err

    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"000000000200.jpg": [[51.6, 34.8, 76.8, 102.4, 0.9], [0, 0, 40, 60]]}))
    assert main(["predict", "--checkpoint", str(result["last"]), str(coco / "val2017"), "--person-boxes", str(boxes),
                 "--skeleton-out", str(tmp_path / "drawn"), "--json", "--no-progress"]) == 0
    pred = json.loads(capsys.readouterr().out)
    persons = {Path(r["file"]).name: r["persons"] for r in pred["results"]}
    assert len(persons["000000000200.jpg"]) == 2 and persons["000000000201.jpg"] == []
    joints = np.array(persons["000000000200.jpg"][0]["keypoints"])
    assert joints.shape == (17, 3)
    drawn = Image.open(tmp_path / "drawn" / "000000000200_skeleton.png")
    assert drawn.size == (600, 540)  # enlarged 3x: the short side >= 512 (tdaf.draw)


def test_config_errors_name_the_setting(coco):
    task = PoseTask()
    base = dict(task="pose", data="coco", data_dir=str(coco), input_size=128)
    with pytest.raises(ValueError, match="model: 'resnet18' is not a pose model"):
        task.check_config(TrainConfig(model="resnet18", **base))
    with pytest.raises(ValueError, match="input_size: got 200; allowed for pose: a multiple of 128"):
        task.check_config(TrainConfig(model="simplebaseline_resnet18", **dict(base, input_size=200)))
    with pytest.raises(ValueError, match="data: got 'digits'"):
        task.check_config(TrainConfig(model="simplebaseline_resnet18", **dict(base, data="digits")))
    with pytest.raises(FileNotFoundError, match="person_keypoints_train2017.json not found"):
        tdaf.pose.open_coco("train", coco / "nowhere")


def test_tab5_configs_share_the_recipe_and_pass_the_task_checks():
    from tdaf.engine.config import load_config_file

    root = Path(__file__).resolve().parent.parent / "configs" / "pose"
    files = sorted(root.glob("tab5_*.yaml"))
    assert len(files) == 8  # ResNet-50/101 x no attention, ANAR-3, ANAR-5, ANAR-7
    recipes = []
    for f in files:
        values = load_config_file(f)
        cfg = TrainConfig.from_dict(values, str(f))
        PoseTask().check_config(cfg, str(f))
        assert cfg.task == "pose" and cfg.optimizer == "adam" and cfg.milestones == [90, 120] and cfg.epochs == 140
        assert (cfg.anar is not None) == cfg.model.startswith("tdaf_")
        recipes.append({k: v for k, v in values.items() if k not in ("model", "flows", "anar", "out")})
    assert all(r == recipes[0] for r in recipes)
