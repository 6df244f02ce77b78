"""--init-from: a TDAF model started from its trained plain counterpart computes that model at
step 0, in every task (same outputs, same metrics from the task's own evaluator); what does
not fit is refused or reported."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import tdaf
from tdaf.engine.checkpoint import checkpoint_payload, model_from_checkpoint
from tdaf.engine.config import TrainConfig
from tdaf.engine.evaluate import evaluate
from tdaf.engine.init_from import init_from
from tdaf.engine.task import get_task, task_for_config, with_task_defaults
from tdaf.engine.trainer import train
from tdaf.io.files import atomic_save

QUIET = dict(epochs=1, workers=0, progress=False, tensorboard=False, seed=0)
CPU = torch.device("cpu")


def _first_batch(loader: DataLoader) -> Any:
    inputs, _, _ = next(iter(loader))
    return inputs


def _plain_run(tmp_path: Path, base: dict[str, Any], plain: str) -> Path:
    """The real training path for 1-2 steps of the plain model; its checkpoint."""
    result = train({**base, **QUIET, "model": plain, "out": str(tmp_path / "plain")})
    return result["last"]


def _step0(base: dict[str, Any], model_name: str, ckpt: Path, **extra: Any):
    """What ``tdaf train --init-from ckpt`` builds before its first step, and the task and
    validation loader of that run."""
    cfg = TrainConfig.from_dict({**base, **QUIET, "model": model_name, "init_from": str(ckpt), **extra})
    task = task_for_config(cfg)
    cfg = with_task_defaults(cfg, task)
    data = task.build_data(cfg)
    built = task.build_model(cfg, data.meta)
    report = init_from(built.model, cfg.init_from, task, cfg.attention_init)
    loader = DataLoader(data.val, batch_size=4, collate_fn=data.collate)
    return built.model, task, loader, report


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _check_step0(base: dict[str, Any], plain: str, tdaf_name: str, tmp_path: Path, metrics: tuple[str, ...]) -> dict:
    ckpt = _plain_run(tmp_path, base, plain)
    reference, _ = model_from_checkpoint(ckpt)
    model, task, loader, report = _step0(base, tdaf_name, ckpt)
    assert report.copied and not report.shape_differs and not report.unused
    assert report.new and all(".attention." in f".{k}" for k in report.new)  # only the ANARs start new
    assert set(report.attention.values()) == {report.attention[next(iter(report.attention))]}
    assert all(v.startswith("identity") for v in report.attention.values())
    model.eval()
    inputs = _first_batch(loader)
    with torch.no_grad():
        _assert_same(task.predict(model, inputs), task.predict(reference, inputs))
    ours = evaluate(model, loader, CPU, task)
    theirs = evaluate(reference, loader, CPU, task)
    for key in metrics:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    # without the identity start, the same weights give another network
    tdaf.init_attention(model, "random")
    with torch.no_grad():
        changed = task.predict(model, inputs)
    with pytest.raises(AssertionError):
        _assert_same(changed, task.predict(reference, inputs))
    return {"ours": ours, "theirs": theirs}


# ---------------------------------------------------------------- step 0 equals the plain model, every task
def test_classification_step0_equals_the_plain_checkpoint(tmp_path):
    base = dict(task="classification", data="digits", train_subset=32, val_subset=24, batch_size=16, lr=0.05,
                lr_batch=16)
    _check_step0(base, "resnet18_cifar", "tdaf_resnet18_cifar", tmp_path, ("top1", "top5", "loss"))


def test_detection_step0_equals_the_plain_checkpoint(tmp_path):
    from tdaf.detection import write_digit_scenes

    scenes = write_digit_scenes(tmp_path / "scenes", train_images=2, val_images=2, size=64, digits=(1, 3),
                                scale=(16, 28))
    base = dict(task="detection", data="digit_scenes", data_dir=str(scenes), input_size=64, batch_size=2, lr=0.01,
                lr_batch=16, flows=2)
    plain = {k: v for k, v in base.items() if k != "flows"}
    ckpt = _plain_run(tmp_path, plain, "fcos_resnet18_fpn")
    reference, _ = model_from_checkpoint(ckpt)
    model, task, loader, report = _step0(base, "tdaf_fcos_resnet18_fpn", ckpt)
    # backbone, FPN and FCOS head all copied; only the ANARs start new
    assert any(k.startswith("backbone.fpn.") for k in report.copied)
    assert any(k.startswith("head.classification_head.") for k in report.copied)
    assert report.new and all(".attention." in k for k in report.new) and not report.unused
    inputs = _first_batch(loader)
    model.eval()
    model.score_thresh = reference.score_thresh = 0.0  # one step in: keep the low-scored boxes to compare
    with torch.no_grad():
        ours, theirs = task.predict(model, inputs), task.predict(reference, inputs)
    assert sum(len(d["boxes"]) for d in ours) > 0  # something to compare
    _assert_same(ours, theirs)
    a, b = evaluate(model, loader, CPU, task), evaluate(reference, loader, CPU, task)
    assert "AP" in a and {k: v for k, v in a.items() if isinstance(v, float)} == pytest.approx(
        {k: v for k, v in b.items() if isinstance(v, float)}, abs=1e-9, nan_ok=True)


def test_pose_step0_equals_the_plain_checkpoint(tmp_path):
    from test_pose import write_coco

    coco = write_coco(tmp_path / "coco")
    base = dict(task="pose", data="coco", data_dir=str(coco), input_size=128, batch_size=2, optimizer="adam",
                lr=1e-3, lr_batch=2, weight_decay=0.0)
    _check_step0(base, "simplebaseline_resnet18", "tdaf_simplebaseline_resnet18", tmp_path, ("AP", "AR", "loss"))


def test_video_step0_equals_the_plain_checkpoint(tmp_path):
    from test_video_data import write_kinetics

    root = write_kinetics(tmp_path / "k", videos_per_class=1, frames=16, size=32)
    base = dict(task="video", data="kinetics", data_dir=str(root), input_size=32, batch_size=2, lr=0.01,
                lr_batch=2)
    _check_step0(base, "r3d_resnet10_w16", "tdaf_r3d_resnet10_w16", tmp_path, ("clip_top1", "video_top1", "loss"))


# ---------------------------------------------------------------- the command and what is refused
@pytest.fixture(scope="module")
def plain_digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    return train({"data": "digits", "model": "resnet18_cifar", "train_subset": 16, "val_subset": 16,
                  "batch_size": 16, **QUIET, "out": str(out)})["last"]


def test_train_command_logs_what_was_copied(plain_digits, tmp_path, caplog):
    from tdaf.cli.main import main

    with caplog.at_level(logging.INFO, logger="tdaf.train"):
        assert main(["train", "--model", "tdaf_resnet18_cifar", "--init-from", str(plain_digits), "--train-subset",
                     "16", "--val-subset", "16", "--batch-size", "16", "--epochs", "1", "--workers", "0",
                     "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "t")]) == 0
    text = caplog.text
    assert "copied 122 tensors" in text and "60 BatchNorm statistics into every flow" in text
    assert "starts new: 42 tensors" in text and "backbone.attention.0.trans.0" in text
    assert "attention of backbone: identity" in text
    saved = torch.load(tmp_path / "t" / "last.pt", weights_only=True)
    assert saved["config"]["init_from"] == str(plain_digits)


def test_a_torchvision_state_dict_in_its_own_names(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    model = tdaf.create_model("tdaf_resnet18", num_classes=5)
    report = init_from(model, tmp_path / "tv.pth", get_task("classification")())
    assert len(report.copied) == len(net.state_dict()) and not report.unused
    mfbn = model.backbone.stages[1][0].bn1  # every flow starts with the plain BatchNorm's statistics
    assert mfbn.running_mean.shape == (3, 128)
    for flow in range(3):
        torch.testing.assert_close(mfbn.running_mean[flow], net.layer2[0].bn1.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(mfbn.running_var[flow], net.layer2[0].bn1.running_var, rtol=0, atol=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), net.eval()(x), rtol=0, atol=0)


def test_a_tdaf_checkpoint_with_the_same_flows_keeps_its_attention(tmp_path):
    torch.manual_seed(0)
    src = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, attention_init="random")
    atomic_save(checkpoint_payload("tdaf_resnet18_cifar", {"num_classes": 10}, src.state_dict(),
                                   task="classification"), tmp_path / "t.pt")
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10)
    report = init_from(model, tmp_path / "t.pt", get_task("classification")())
    assert not report.new and report.attention["backbone"].startswith("copied")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), src.eval()(x), rtol=0, atol=0)
    # an explicit attention_init replaces the file's ANARs
    report = init_from(model, tmp_path / "t.pt", get_task("classification")(), attention_init="identity")
    assert "replacing" in report.attention["backbone"]
    assert all(g.head.weight.abs().max() == 0 for g in model.backbone.attention)


def test_refusals_name_the_file_and_the_reason(tmp_path, plain_digits):
    task = get_task("classification")()
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10)
    # another task's checkpoint
    det = checkpoint_payload("fcos_resnet18_fpn", {}, {"x": torch.zeros(1)}, task="detection")
    atomic_save(det, tmp_path / "det.pt")
    with pytest.raises(ValueError, match=r"--init-from: .*det.pt is a detection checkpoint .*task is classification"):
        init_from(model, tmp_path / "det.pt", task)
    # nothing fits
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"nothing in .*other.pt fits tdaf_resnet18_cifar"):
        init_from(model, tmp_path / "other.pt", task)
    # a TDAF checkpoint with other flows, or another ANAR
    for kwargs in ({"flows": 2}, {"anar": "anar5"}):
        src = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, **kwargs)
        atomic_save(checkpoint_payload("tdaf_resnet18_cifar", {"num_classes": 10, **kwargs}, src.state_dict(),
                                       task="classification"), tmp_path / "t.pt")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=r"per-flow statistics or ANARs that do not fit .*same flows and ANAR"):
            init_from(model, tmp_path / "t.pt", task)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded
    # ... and into a plain model
    with pytest.raises(ValueError, match="a plain model"):
        init_from(tdaf.create_model("resnet18_cifar", num_classes=10), tmp_path / "t.pt", task)
    # with --pretrained: one or the other
    with pytest.raises(ValueError, match="init_from, pretrained: give one of them"):
        TrainConfig(init_from=str(plain_digits), pretrained="x.pth").validate()


def test_torchvision_fcos_and_2d_resnet_layouts_in_other_tasks(tmp_path):
    from torchvision.models import resnet18
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.resnet import BasicBlock, ResNet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    # a whole torchvision FCOS (backbone.body.layer1..., FPN, head) into tdaf's, with ANARs
    body = _resnet_fpn_extractor(resnet18(), 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    tv = FCOS(body, num_classes=5, min_size=64, max_size=64, score_thresh=0.0).eval()
    torch.save(tv.state_dict(), tmp_path / "fcos.pth")
    model = tdaf.create_model("tdaf_fcos_resnet18_fpn", num_classes=5, min_size=64, max_size=64, flows=2,
                              score_thresh=0.0)
    report = init_from(model, tmp_path / "fcos.pth", get_task("detection")())
    assert len(report.copied) == len(tv.state_dict()) and not report.unused
    assert all(".attention." in k for k in report.new)
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        _assert_same(model.eval()(x), tv(x))
    # a 2D torchvision ResNet inflated into a 3D TDAF video model
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4)
    torch.save(net.state_dict(), tmp_path / "r10.pth")
    video = tdaf.create_model("tdaf_r3d_resnet10", num_classes=4)
    report = init_from(video, tmp_path / "r10.pth", get_task("video")())
    assert len(report.copied) == len(net.state_dict()) and not report.unused and not report.shape_differs
    stem = video.state_dict()["backbone.stages.0.conv1.weight"]
    torch.testing.assert_close(stem.sum(2), net.conv1.weight.detach())  # 7 frames of w / 7
    assert report.attention["backbone"].startswith("identity")


def test_a_run_never_writes_over_its_init_from_file(tmp_path):
    from tdaf.engine.preflight import check_run_inputs

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"x")
    cfg = TrainConfig(init_from=str(tmp_path / "run" / "best.pt"), out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="--init-from: .*best.pt, a file this run writes"):
        check_run_inputs(tmp_path / "run", cfg)
    check_run_inputs(tmp_path / "run2", cfg)
