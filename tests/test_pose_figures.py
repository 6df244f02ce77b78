"""The bundled stick figures (a COCO keypoint set drawn on first use) and their quick run.

Each test writes a few images of its own; the full set is only written by the quick run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tdaf.data.registry import dataset_spec
from tdaf.engine.config import TrainConfig, load_config_file
from tdaf.engine.trainer import Trainer
from tdaf.pose import PoseTask, TopDownTransform, pose_collate
from tdaf.pose import figures
from tdaf.pose.data import COCO_SIGMAS, CocoPersons, annotation_file
from tdaf.pose.metrics import KeypointEvaluator, coco_keypoint_stats
from tdaf.pose.figures import KEYPOINT_NAMES, SKELETON, render_scene, write_stick_figures

SMALL = {"train": 3, "val": 6}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stick_figures(tmp_path_factory.mktemp("figures") / "set", SMALL, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_seed_writes_the_same_files_and_another_seed_others(small_set, tmp_path):
    again = write_stick_figures(tmp_path / "again", SMALL, seed=3)
    assert _files(again) == _files(small_set)
    other = _files(write_stick_figures(tmp_path / "other", SMALL, seed=4))
    assert other.keys() == _files(small_set).keys()
    assert other["val2017/000000000001.png"] != _files(small_set)["val2017/000000000001.png"]
    with pytest.raises(ValueError, match="exists and is not empty"):
        write_stick_figures(small_set, SMALL)


def test_visibility_follows_what_the_pixels_show():
    """v = 2 exactly where the joint's pixel is the figure's (and an ear not turned away),
    0 (with x = y = 0) exactly outside the image, 1 otherwise; every visible joint is drawn
    in one of the figure's colours."""
    rng = np.random.default_rng(0)
    seen = {0: 0, 1: 0, 2: 0}
    for _ in range(30):
        scene = render_scene(rng)
        h, w = scene.owner.shape
        for k, (person, joints) in enumerate(zip(scene.persons, scene.joints)):
            kpts = np.array(person["keypoints"]).reshape(17, 3)
            colours = {tuple(c) for c in person["colours"].values()}
            for i, ((x, y), (ax, ay, v)) in enumerate(zip(joints.tolist(), kpts.tolist())):
                seen[v] += 1
                inside = 0 <= x < w and 0 <= y < h
                if not inside:
                    assert (ax, ay, v) == (0, 0, 0)
                    continue
                assert (ax, ay) == (x, y) and v in (1, 2)
                mine = scene.owner[y, x] == k + 1
                if v == 2:
                    assert mine and tuple(scene.image[y, x]) in colours, (k, KEYPOINT_NAMES[i])
                elif mine:  # hidden while its own pixel shows the figure: only a turned-away ear
                    assert KEYPOINT_NAMES[i].endswith("_ear")
            assert person["num_keypoints"] == int((kpts[:, 2] > 0).sum())
    assert min(seen.values()) > 10  # every case occurs (out of the image, occluded, visible)


def test_boxes_areas_and_masks_are_exact():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for _ in range(10):
        scene = render_scene(rng)
        h, w = scene.owner.shape
        for k, person in enumerate(scene.persons):
            rle = mask_api.frPyObjects(person["segmentation"], h, w)
            mask = mask_api.decode(rle).astype(bool)
            assert mask.sum() == person["area"] > 0
            np.testing.assert_allclose(mask_api.toBbox(rle), person["bbox"])
            assert (mask | (scene.owner != k + 1)).all()  # every pixel the figure shows is in its mask
            x, y, bw, bh = person["bbox"]
            kpts = np.array(person["keypoints"]).reshape(17, 3)
            lab = kpts[kpts[:, 2] > 0]
            assert (lab[:, 0] >= x).all() and (lab[:, 0] < x + bw).all()
            assert (lab[:, 1] >= y).all() and (lab[:, 1] < y + bh).all()
            assert mask[lab[:, 1].astype(int), lab[:, 0].astype(int)].all()  # joints lie on the figure


def test_the_coco_reader_and_the_crop_transform_take_the_set_unchanged(small_set):
    ann, images = annotation_file(small_set, "val")
    data = json.loads(ann.read_text())
    assert data["categories"][0]["keypoints"] == KEYPOINT_NAMES and data["categories"][0]["skeleton"] == SKELETON
    raw = CocoPersons(ann, images)
    assert len(raw) == len(data["annotations"]) > len(data["images"]) - 1 and not raw.dropped
    assert raw.info.flip_pairs[0] == (1, 2) and len(raw.info.flip_pairs) == 8
    t = TopDownTransform((128, 96), raw.info)
    for i in range(len(raw)):
        (img, inst), _, _ = raw.load(i)
        assert img.size == (160, 160)
        x, target = t((img, inst))
        assert x.shape == (3, 128, 96) and target["heatmaps"].shape == (17, 32, 24)
        assert torch.equal(target["weights"] > 0, torch.from_numpy(inst["keypoints"][:, 2] > 0))


def test_ground_truth_as_results_scores_ap_1_and_shifted_joints_less(small_set):
    raw = CocoPersons(*annotation_file(small_set, "val"))
    results = [dict(image_id=a["image_id"], category_id=1, keypoints=a["keypoints"], score=1.0)
               for a in raw.coco.anns.values()]
    stats = coco_keypoint_stats(raw.coco, results, sigmas=COCO_SIGMAS)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    shifted = [dict(r, keypoints=[v + 3 * (i % 3 < 2) for i, v in enumerate(r["keypoints"])]) for r in results]
    assert coco_keypoint_stats(raw.coco, shifted, sigmas=COCO_SIGMAS)["AP"] < 0.6
    # through the task's own path (crop, heat-maps, decoding back through the crop): the targets
    # as predictions lose only the heat-map grid's quantisation
    t = TopDownTransform((128, 96), raw.info)
    ev = KeypointEvaluator(raw.coco, raw.category_id, raw.info.sigmas, 4)
    images, targets, _ = pose_collate([(t(raw.load(i)[0]), i, "x") for i in range(len(raw))])
    ev.update(targets["heatmaps"], targets)
    assert ev.compute()["AP"] > 0.8


def test_written_on_first_use_under_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TDAF_DATA", str(tmp_path))
    monkeypatch.setattr(figures, "SIZES", {"train": 1, "val": 2})
    val = dataset_spec("stick_figures", "pose").open("val", None)
    assert val.ann_file == tmp_path / figures.VERSION / "annotations" / "person_keypoints_val2017.json"
    assert len(val.image_ids) == 2
    stamp = val.ann_file.stat().st_mtime_ns
    assert figures.open_stick_figures("val").ann_file.stat().st_mtime_ns == stamp  # read, not written again
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="holds files but no stick figures"):
        figures.open_stick_figures("train", tmp_path / "junk")


def test_quick_run_configs_differ_only_in_the_model():
    files = [ROOT / "configs" / "pose" / f"stick_figures_{m}simplebaseline_resnet18.yaml" for m in ("", "tdaf_")]
    values = [load_config_file(f) for f in files]
    for f, v in zip(files, values):
        cfg = TrainConfig.from_dict(v, str(f))
        PoseTask().check_config(cfg, str(f))
        assert cfg.data == "stick_figures" and cfg.input_size == 128
    assert values[1]["model"] == "tdaf_" + values[0]["model"] and values[1]["flows"] == 3
    assert {k: v for k, v in values[0].items() if k not in ("model", "out")} == \
        {k: v for k, v in values[1].items() if k not in ("model", "flows", "anar", "out")}


def test_train_then_eval_without_data_dir_finds_the_set(small_set, tmp_path, capsys):
    from tdaf.cli.main import main

    cfg = TrainConfig(task="pose", model="simplebaseline_resnet18", data="stick_figures", data_dir=str(small_set),
                      input_size=128, epochs=1, batch_size=4, optimizer="adam", lr=1e-3, lr_batch=4, weight_decay=0.0,
                      workers=0, out=str(tmp_path / "run"), progress=False, tensorboard=False)
    result = Trainer(cfg).fit()
    assert 0.0 <= result["history"][-1]["val_AP"] <= 1.0
    assert main(["eval", "--checkpoint", str(result["last"]), "--json", "--workers", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    raw = CocoPersons(*annotation_file(small_set, "val"))
    assert out["data"] == "stick_figures" and out["persons"] == len(raw)
    assert out["AP"] == pytest.approx(result["history"][-1]["val_AP"])
