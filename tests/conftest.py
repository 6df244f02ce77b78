"""Suite-wide settings."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import torch


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.stash[_FAILED] = True


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _free_disk(request: pytest.FixtureRequest) -> Iterator[None]:
    """Delete a passed test's tmp_path when it ends.

    Training tests write checkpoints of 50-350 MB each; kept until the session ends (pytest's
    default), the suite held 12 GB of them at its end and filled the disk of a CI machine.
    A failed test's folder stays for inspection.
    """
    yield
    path = getattr(request.node, "funcargs", {}).get("tmp_path")
    if path is not None and not request.node.stash.get(_FAILED, False):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest, and immune to a busy machine's stalled OpenMP barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- tiny runs of every dense task
# Session fixtures (built once, on first use) for the tests that need a trained checkpoint of a
# task: the smallest model, a handful of samples, one epoch. Tests must not write into them
# (tests/test_hostile_*.py check that by hashing).

def _tiny_train(out, **cfg):
    from tdaf.engine.trainer import train

    return train({"epochs": 1, "workers": 0, "progress": False, "tensorboard": False, "out": str(out), **cfg})


@pytest.fixture(scope="session")
def classification_run(tmp_path_factory: pytest.TempPathFactory):
    """(ImageFolder folder, checkpoint) of a 2-flow TDAF-ResNet18 (CIFAR stem) trained for one
    epoch on 3 digit classes (greyscale PNG scans), its data named by a path relative to the
    folder training ran in (the checkpoint must record it absolute)."""
    import os

    from PIL import Image

    from tdaf.data.digits import digits_pixels

    root = tmp_path_factory.mktemp("classification_run")
    for split, n in (("train", 4), ("val", 2)):
        images, labels = digits_pixels(split)
        for c in range(3):
            (root / "digits3" / split / f"digit{c}").mkdir(parents=True)
            for k, i in enumerate((labels == c).nonzero()[0][:n]):
                Image.fromarray(images[i], "L").save(root / "digits3" / split / f"digit{c}" / f"{k:03d}.png")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = _tiny_train("run", task="classification", model="tdaf_resnet18_cifar", flows=2, data="imagefolder",
                             data_dir="digits3", input_size=32, recipe="cifar", batch_size=4, lr=0.01, lr_batch=16)
    finally:
        os.chdir(cwd)
    return root / "digits3", root / result["last"]


@pytest.fixture(scope="session")
def detection_run(tmp_path_factory: pytest.TempPathFactory):
    """(scenes folder, checkpoint) of a 2-flow TDAF FCOS-ResNet18 trained for one step."""
    from tdaf.detection import write_digit_scenes

    root = tmp_path_factory.mktemp("detection_run")
    scenes = write_digit_scenes(root / "scenes", train_images=2, val_images=2, size=64, digits=(1, 2), scale=(16, 28))
    result = _tiny_train(root / "run", task="detection", model="tdaf_fcos_resnet18_fpn", flows=2,
                         data="digit_scenes", data_dir=str(scenes), input_size=64, batch_size=2, lr=0.01, lr_batch=16)
    return scenes, result["last"]


@pytest.fixture(scope="session")
def pose_run(tmp_path_factory: pytest.TempPathFactory):
    """(COCO keypoints folder, checkpoint) of a TDAF SimpleBaseline-ResNet18 trained for one step."""
    from test_pose import write_coco

    root = tmp_path_factory.mktemp("pose_run")
    coco = write_coco(root / "coco")
    result = _tiny_train(root / "run", task="pose", model="tdaf_simplebaseline_resnet18", data="coco",
                         data_dir=str(coco), input_size=128, batch_size=2, optimizer="adam", lr=1e-3, lr_batch=2,
                         weight_decay=0.0)
    return coco, result["last"]


@pytest.fixture(scope="session")
def video_run(tmp_path_factory: pytest.TempPathFactory):
    """(Kinetics-layout folder, checkpoint) of a TDAF R3D-10 (width 16) trained for one step."""
    from test_video_data import write_kinetics

    root = tmp_path_factory.mktemp("video_run")
    kinetics = write_kinetics(root / "k", videos_per_class=1, frames=16, size=32)
    result = _tiny_train(root / "run", task="video", model="tdaf_r3d_resnet10_w16", data="kinetics",
                         data_dir=str(kinetics), input_size=32, batch_size=2, lr=0.01, lr_batch=4)
    return kinetics, result["last"]
