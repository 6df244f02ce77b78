"""`tdaf attention`, `tdaf export` and `tdaf profile` on a tiny trained checkpoint of every
task, run through ``tdaf.cli.main.main`` (issue #22): one command layer over the task
interface, each task supplying its example input, its reader and preprocessing, its R2DNS
and its exported network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tdaf.cli.main import main
from tdaf.engine.checkpoint import model_from_checkpoint
from tdaf.engine.task import get_task

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")

TASKS = ("classification", "detection", "pose", "video")
HAVE_ONNX = all(__import__("importlib").util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@pytest.fixture(scope="session")
def classification_run(tmp_path_factory: pytest.TempPathFactory):
    """(image folder, checkpoint) of a 2-flow TDAF-ResNet-18 trained one epoch on 16 digits."""
    from conftest import _tiny_train

    root = tmp_path_factory.mktemp("classification_run")
    result = _tiny_train(root / "run", task="classification", model="tdaf_resnet18_cifar", flows=2, data="digits",
                         train_subset=16, val_subset=8, batch_size=8, lr=0.01)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(images / "digit.png")
    return images, result["last"]


def _input(task: str, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """(an input file of the task, its checkpoint)."""
    data, ckpt = request.getfixturevalue(f"{task}_run")
    if task == "classification":
        return data / "digit.png", Path(ckpt)
    if task == "detection":
        return sorted((Path(data) / "val").glob("*.png"))[0], Path(ckpt)
    if task == "pose":
        return sorted((Path(data) / "val2017").glob("*"))[0], Path(ckpt)
    return sorted((Path(data) / "val").rglob("*.mp4"))[0], Path(ckpt)


def _loaded(ckpt: Path, task: str):
    model, meta = model_from_checkpoint(ckpt)
    t = get_task(task)()
    return model, t, t.inference_meta(meta, model)


# ---------------------------------------------------------------- attention
@pytest.mark.parametrize("task", TASKS)
def test_attention_on_every_task(task, request, tmp_path, capsys):
    path, ckpt = _input(task, request)
    out = tmp_path / "attn"
    assert main(["attention", "--checkpoint", str(ckpt), str(path), "--out", str(out), "--save-maps", "npz",
                 "--no-progress", "--dpi", "30"]) == 0
    written = [Path(p) for p in capsys.readouterr().out.split()]
    figure = out / f"{path.stem}.attention.png"
    assert written[0] == figure and figure.exists()
    info = Image.open(figure).info
    model, t, meta = _loaded(ckpt, task)
    r2dns = t.attention_r2dns(model)
    stages, n = len(r2dns.stages), r2dns.flows
    assert info["tdaf:stages"] == ",".join(str(s) for s in range(1, stages))  # the stages with an ANAR
    maps = np.load(out / f"{path.stem}.maps.npz")
    # flows 2..N only; the last flow gates every stage with an ANAR
    assert {f"stage{s}_flow{n}" for s in range(1, stages)} <= set(maps.files)
    assert all(not k.endswith("_flow1") for k in maps.files)
    first = maps[f"stage1_flow{n}"]
    c, *size = meta["input_size"]
    # stage 1's map has the resolution of stage 1's output in the last flow (the full-size input)
    if task == "classification":  # CIFAR ResNet: stride-1 stem, the 32x32 input
        assert first.shape[-2:] == (32, 32) and size == [32, 32]
    elif task == "detection":  # the whole 64x64 scene at min_size 64 (not padded to 64x107): C2 at 1/4
        assert first.shape[-2:] == (16, 16) and size == [64, 107]
    elif task == "pose":  # the head's first deconvolution doubles C5 (1/32) of the 128x96 crop
        assert first.shape[-2:] == (8, 6) and size == [128, 96]
    else:  # the strip: 8 of the 16 frames; R3D's stem + layer1 halve T and quarter H, W: 16x32x32 -> 8x8x8
        assert first.shape[-3:] == (8, 8, 8) and info["tdaf:frames"] == "0,2,4,6,9,11,13,15"


def test_video_attention_frame_folder_and_frame_option(request, tmp_path, capsys):
    from test_video_data import ramp_frames, write_frame_folder

    _, ckpt = request.getfixturevalue("video_run")
    folder = tmp_path / "clip"
    write_frame_folder(folder, ramp_frames(20, size=32))
    out = tmp_path / "attn"
    assert main(["attention", "--checkpoint", str(ckpt), str(folder), "--out", str(out), "--frame", "3",
                 "--no-progress", "--dpi", "30"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "clip.frame3.attention.png")]
    assert Image.open(out / "clip.frame3.attention.png").info["tdaf:flows"] == "1,2,3"  # every flow of frame 3
    assert main(["attention", "--checkpoint", str(ckpt), str(folder), "--out", str(out), "--frame", "16"]) == 2
    assert "--frame: got 16; allowed: 0..15 (the clip has 16 frames)" in capsys.readouterr().err


def test_attention_input_size_resizes_straight(request, tmp_path, capsys):
    path, ckpt = _input("pose", request)
    assert main(["attention", "--checkpoint", str(ckpt), str(path), "--out", str(tmp_path), "--input-size", "64",
                 "48", "--save-maps", "npz", "--no-progress", "--dpi", "30"]) == 0
    # C5 of a 64x48 crop is 2x2 (rounded up), the head's first stage doubles it
    assert np.load(tmp_path / f"{path.stem}.maps.npz")["stage1_flow3"].shape[-2:] == (4, 4)


# ---------------------------------------------------------------- export
EXPORT_SIZES = {  # task -> (--input-size, the example input it gives)
    "classification": (["40", "36"], [3, 40, 36]),
    "detection": (["96", "80"], [3, 96, 80]),
    "pose": (["64", "48"], [3, 64, 48]),
    "video": (["16", "36", "36"], [3, 16, 36, 36]),
}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("task", TASKS)
def test_export_on_every_task(task, fmt, request, tmp_path, capsys):
    if fmt == "onnx" and not HAVE_ONNX:
        pytest.skip("onnx / onnxruntime not installed (the export extra)")
    _, ckpt = _input(task, request)
    out = tmp_path / f"model.{fmt}"
    model, t, meta = _loaded(ckpt, task)
    # the checkpoint's own size (the report printer takes every rank), then --input-size
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out), "--static-hw"]) == 0
    text = capsys.readouterr().out
    dims = ["T", "H", "W"][-(len(meta["input_size"]) - 1):]
    assert f"input (B, 3, {', '.join(dims)})" in text and "ok: tolerance" in text
    assert ("outputs: cls_logits, bbox_regression, bbox_ctrness" in text) == (task == "detection")
    given, size = EXPORT_SIZES[task]
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out), "--overwrite", "--json",
                 "--input-size", *given]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["input_size"] == size and out.exists()
    assert len(report["parity"]) == 2  # the export size and a second, odd one with another batch size
    for p in report["parity"]:
        assert p["error"] is None and p["max_abs_diff"] <= 1e-4 * max(1.0, p["max_abs_ref"])
    # the file gives what PyTorch gives, checked here, independently of tdaf.export
    net = t.network(model).eval()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = net(x)
    ref = list(ref) if isinstance(ref, tuple) else [ref]
    if fmt == "onnx":
        from tdaf.export import run_onnx

        import onnxruntime as ort

        got = [torch.from_numpy(a) for a in run_onnx(out, x)]
        names = [o.name for o in ort.InferenceSession(str(out)).get_outputs()]
        assert names == (["cls_logits", "bbox_regression", "bbox_ctrness"] if task == "detection" else ["output"])
    else:
        got = torch.jit.load(str(out))(x)
        got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(ref) == (3 if task == "detection" else 1)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-4 * max(1.0, float(b.abs().max())), rtol=0)


def test_detection_export_decodes_to_the_detectors_boxes(request, tmp_path, capsys):
    """docs/export.md's post-processing: the network's outputs (which the export gives within
    1e-4, checked above), decoded with tdaf.detection.network.decode_detections, are the boxes
    of model([image])."""
    from torchvision.transforms.v2 import functional as TF

    from tdaf.detection.network import decode_detections, preprocess

    path, ckpt = _input("detection", request)
    model, task, _ = _loaded(ckpt, "detection")
    model.score_thresh = 0.0  # a one-step model scores low: keep every box, so there is something to compare
    image = TF.to_dtype(TF.pil_to_tensor(Image.open(path).convert("RGB")), torch.float32, scale=True)
    # 48x48 is resized to 64x64 (min_size 64), which the detector does not pad (a multiple of 32):
    # the boxes must come back to 48x48
    image = TF.resize(image, [48, 48], antialias=True)
    x = preprocess(model.transform, image)[None]
    assert x.shape[-2:] == (64, 64)
    with torch.no_grad():
        got = decode_detections(model, task.network(model)(x), x.shape[-2:], [image.shape[-2:]])[0]
        want = model([image])[0]
    assert len(want["boxes"]) > 0 and float(want["boxes"].max()) <= 48
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # boxes in pixels, float32
    with pytest.raises(ValueError, match="give the .H, W. the network ran at"):
        decode_detections(model, task.network(model)(x), (96, 96))


# ---------------------------------------------------------------- profile
PROFILED = {  # task -> (TDAF model, its plain baseline, --input-size, the input profiled)
    "classification": ("tdaf_resnet18_cifar", "resnet18_cifar", ["32", "32"], [3, 32, 32]),
    "detection": ("tdaf_fcos_resnet18_fpn", "fcos_resnet18_fpn", ["64", "64"], [3, 64, 64]),
    "pose": ("tdaf_simplebaseline_resnet18", "simplebaseline_resnet18", ["64", "48"], [3, 64, 48]),
    "video": ("tdaf_r3d_resnet10_w16", "r3d_resnet10_w16", [], [3, 16, 32, 32]),
}


@pytest.mark.parametrize("task", TASKS)
def test_profile_on_every_task(task, capsys):
    import tdaf

    name, baseline, given, size = PROFILED[task]
    argv = ["profile", name, "--flows", "2", "--iters", "1", "--json"] + (["--input-size", *given] if given else [])
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)
    model = tdaf.create_model(name, flows=2)
    anar = get_task(task)().attention_r2dns(model).anar_name  # the model's default ANAR
    assert row["input_size"] == size and row["flows"] == 2 and row["anar"] == anar and row["latency_ms"] > 0
    for r, n, kw in ((row, name, {"flows": 2}), (row["baseline"], baseline, {})):
        assert r["model"] == n and r["gmacs"] > 0
        assert r["params"] == sum(p.numel() for p in tdaf.create_model(n, **kw).parameters())
    assert row["gmacs"] > row["baseline"]["gmacs"]  # the flows at lower resolution and the ANARs cost MACs


@pytest.mark.parametrize("task", TASKS)
def test_profile_of_a_checkpoint(task, request, capsys):
    _, ckpt = _input(task, request)
    assert main(["profile", "--checkpoint", str(ckpt), "--no-latency", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    model, _, meta = _loaded(ckpt, task)
    assert row["input_size"] == meta["input_size"] and row["params"] == sum(p.numel() for p in model.parameters())
    assert row["gmacs"] > 0 and row["flows"] == get_task(task)().attention_r2dns(model).flows
    assert 0 < row["baseline"]["gmacs"] < row["gmacs"] and row["baseline"]["input_size"] == row["input_size"]


def test_zoo_table_takes_every_task(capsys):
    assert main(["profile", "--all", "*fcos_resnet18_fpn", "*simplebaseline_resnet18", "--json",
                 "--input-size", "64", "64"]) == 0
    rows = {r["model"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {"fcos_resnet18_fpn", "tdaf_fcos_resnet18_fpn", "simplebaseline_resnet18",
                         "tdaf_simplebaseline_resnet18"}
    assert rows["tdaf_fcos_resnet18_fpn"]["overhead"]["gmacs"] > 0 and rows["tdaf_fcos_resnet18_fpn"]["flows"] == 3


def test_cli_and_tasks_do_not_import_each_other():
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "tdaf"
    mine = ["attention.py", "export.py", "profile.py", "_load.py"]
    for f in mine:
        tree = ast.parse((src / "cli" / f).read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.lstrip(".").split(".")[0] in TASKS], f
    for task in TASKS:
        tree = ast.parse((src / task / "task.py").read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if "cli" in n.split(".")], task


def test_pose_attention_on_person_boxes(request, tmp_path, capsys):
    path, ckpt = _input("pose", request)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({path.name: [[20, 10, 60, 90, 0.9], [5000, 5000, 10, 10]]}))
    out = tmp_path / "attn"
    assert main(["attention", "--checkpoint", str(ckpt), str(path), "--out", str(out), "--person-boxes", str(boxes),
                 "--save-maps", "npz", "--no-progress", "--dpi", "30"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out / f"{path.stem}_person0.attention.png"),
                                    str(out / f"{path.stem}_person0.maps.npz")]
    assert "box 1 lies outside" in captured.err
    # the crop of the box, not the whole image: other maps than without --person-boxes
    assert main(["attention", "--checkpoint", str(ckpt), str(path), "--out", str(out), "--save-maps", "npz",
                 "--no-progress", "--dpi", "30"]) == 0
    person, whole = np.load(out / f"{path.stem}_person0.maps.npz"), np.load(out / f"{path.stem}.maps.npz")
    assert not np.allclose(person["stage1_flow3"], whole["stage1_flow3"])
    _, other = _input("classification", request)
    assert main(["attention", "--checkpoint", str(other), str(path), "--out", str(tmp_path / "x"), "--person-boxes",
                 str(boxes)]) == 2
    assert "--person-boxes: only for pose models; this is a classification model" in capsys.readouterr().err
