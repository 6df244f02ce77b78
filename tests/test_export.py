"""ONNX / TorchScript export of TDAF models: parity with PyTorch at two sizes (one odd),
dynamic batch and H/W, metadata, the fixed-size fallback, and clean errors. ``tdaf export``
writes the inference form (``tdaf.fold_batchnorm``) by default: its files are checked here
against the unfolded model in eager PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import tdaf
from tdaf.cli.main import main
from tdaf.engine.checkpoint import atomic_save, checkpoint_payload
from tdaf.export import export_model, second_size
from tdaf.inference import FlowFoldedConv
from tdaf.models.classifier import TDAFClassifier
from tdaf.r2dns import R2DNS

# torch.jit.load/trace warn that TorchScript is deprecated on every call; the format is what we test.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")

SIZES = [(2, 32, 32), (3, 45, 37)]  # (batch, H, W): the export size, then an odd, non-square one


def _block(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def tiny_tdaf(anar: str, flows: int = 3) -> TDAFClassifier:
    """A small TDAF classifier (widths 32..64, so ANAR-7's c/32 layers exist) with the
    same R2DNS/ANAR code paths as the registered models, fast to export."""
    torch.manual_seed(0)
    stages = [_block(3, 32, 1), _block(32, 32, 2), _block(32, 64, 2), _block(64, 64, 2)]
    model = TDAFClassifier(R2DNS(stages, [32, 32, 64, 64], [1, 2, 2, 2], flows=flows, anar=anar), 5)
    _randomise_bn(model)
    return model.eval()


def _randomise_bn(model: nn.Module) -> None:
    # Non-trivial running statistics (fresh ones are 0/1), so BN folding is really checked.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randn(b, 3, h, w, generator=g) for b, h, w in SIZES]


def _ort_diff(model: nn.Module, path: Path) -> list[float]:
    """Max abs difference PyTorch vs onnxruntime, computed here, independent of tdaf.export."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for x in _inputs():
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == ref.shape
        diffs.append(float(np.abs(got - ref).max()))
    return diffs


def _onnx_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _dims(path: Path) -> list[str | int]:
    shape = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    return [d.dim_param or d.dim_value for d in shape.dim]


def _write_checkpoint(path: Path, model_name: str, kwargs: dict, state: dict, **meta_extra) -> Path:
    meta = dict(class_names=[f"c{i}" for i in range(kwargs.get("num_classes", 10))], mean=[0.5] * 3,
                std=[0.25] * 3, input_size=[3, 32, 32], resize=None, data="digits", **meta_extra)
    return atomic_save(checkpoint_payload(model_name, kwargs, state, meta), path)


@pytest.fixture(scope="module")
def r18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, anar="anar3")
    _randomise_bn(model)
    path = _write_checkpoint(tmp_path_factory.mktemp("ckpt") / "r18.pt", "tdaf_resnet18_cifar",
                             {"num_classes": 10, "anar": "anar3"}, model.state_dict())
    return model.eval(), path


def test_onnx_cli_checkpoint_parity_dynamic_and_metadata(r18_checkpoint, tmp_path: Path, capsys) -> None:
    model, ckpt = r18_checkpoint
    out = tmp_path / "r18.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "batch 2 @ 32x32: max abs diff" in text and "batch 3 @ 45x37: max abs diff" in text
    assert "height/width dynamic" in text and "ONNX opset 17" in text and text.rstrip().endswith("tolerance 0.0001")
    assert "parity vs PyTorch (the model before folding its BatchNorms)" in text
    dims = _dims(out)
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str) and dims[1] == 3
    # folded by default (no BatchNormalization left), and equal to the unfolded eager model
    assert "BatchNormalization" not in _onnx_ops(out) and "Conv" in _onnx_ops(out)
    assert max(_ort_diff(model, out)) < 1e-4
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert props["model"] == "tdaf_resnet18_cifar" and props["class_names"][3] == "c3"
    assert props["mean"] == [0.5] * 3 and props["input_size"] == [3, 32, 32] and props["dynamic_hw"] is True
    assert props["batchnorm_folded"] is True


def test_no_fold_bn_exports_the_model_as_trained(r18_checkpoint, tmp_path: Path, capsys) -> None:
    model, ckpt = r18_checkpoint
    out = tmp_path / "r18_bn.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out), "--no-fold-bn",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["fold_bn"] is False
    assert "BatchNormalization" in _onnx_ops(out) and max(_ort_diff(model, out)) < 1e-4
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert props["batchnorm_folded"] is False


def test_torchscript_cli_parity_and_metadata(r18_checkpoint, tmp_path: Path, capsys) -> None:
    model, ckpt = r18_checkpoint
    out = tmp_path / "r18.ts.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["dynamic_hw"] and [p["size"] for p in report["parity"]] == [[32, 32], [45, 37]]
    assert report["fold_bn"] is True
    extra = {"tdaf.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["tdaf.json"])["class_names"][9] == "c9"
    assert json.loads(extra["tdaf.json"])["batchnorm_folded"] is True
    assert "aten::batch_norm" not in str(loaded.inlined_graph) and "aten::_convolution" in str(loaded.inlined_graph)
    for x in _inputs():  # the folded trace against the unfolded eager model
        with torch.no_grad():
            assert (loaded(x) - model(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("anar", ["anar5", "anar7"])
def test_onnx_parity_anar_with_skip_crops(anar: str, tmp_path: Path) -> None:
    # ANAR-5/7 crop their up-sampled maps to the skip's size: odd sizes take that path.
    model = tiny_tdaf(anar)
    report = export_model(model, tmp_path / f"{anar}.onnx", "onnx", (3, 32, 32))
    assert report.dynamic_hw and report.ok(1e-4) and len(report.parity) == 2
    diffs = _ort_diff(model, report.path)
    assert max(diffs) < 1e-4
    # the odd size really exercises a crop: an ANAR sees an odd map somewhere
    with tdaf.record_attention(model) as maps, torch.no_grad():
        model(_inputs()[1])
    assert any(s % 2 for m in maps.values() for s in m.shape[2:])


def test_torchscript_parity_anar7(tmp_path: Path) -> None:
    model = tiny_tdaf("anar7")
    report = export_model(model, tmp_path / "a7.pt", "torchscript", (3, 32, 32))
    assert report.dynamic_hw and report.ok(1e-4)
    loaded = torch.jit.load(str(report.path))
    for x in _inputs():
        with torch.no_grad():
            assert (loaded(x) - model(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_folded_export_matches_the_unfolded_eager_model(fmt: str, tmp_path: Path) -> None:
    # MFBN after shared convolutions (FlowFoldedConv: one weight and a per-flow rescale) and
    # after the ANARs' (a folded copy per flow), exported with dynamic batch and H/W.
    model = tiny_tdaf("anar5")
    folded = tdaf.fold_batchnorm(model)
    assert any(isinstance(m, FlowFoldedConv) for m in folded.modules())
    report = export_model(folded, tmp_path / f"folded.{fmt}", fmt, (3, 32, 32), reference=model)
    assert report.dynamic_hw and report.ok(1e-4) and len(report.parity) == 2
    if fmt == "onnx":
        assert "BatchNormalization" not in _onnx_ops(report.path)
        assert max(_ort_diff(model, report.path)) < 1e-4
    else:
        loaded = torch.jit.load(str(report.path))
        for x in _inputs():
            with torch.no_grad():
                assert (loaded(x) - model(x)).abs().max().item() < 1e-4


def test_dynamo_exporter_dynamic_shapes(tmp_path: Path, capfd) -> None:
    pytest.importorskip("onnxscript")
    # The dynamo exporter costs ~10 s per export even for a small graph: the smallest
    # model with a cropping ANAR (2 stages, 2 flows, ANAR-5).
    torch.manual_seed(0)
    model = TDAFClassifier(R2DNS([_block(3, 8, 1), _block(8, 16, 2)], [8, 16], [1, 2], flows=2, anar="anar5"), 3)
    _randomise_bn(model)
    model.eval()
    # the folded model, as `tdaf export` writes it by default, checked against the unfolded one
    folded = tdaf.fold_batchnorm(model)
    assert any(isinstance(m, FlowFoldedConv) for m in folded.modules())
    report = export_model(folded, tmp_path / "dyn.onnx", "onnx", (3, 32, 32), exporter="dynamo", reference=model)
    assert report.exporter == "dynamo" and report.opset == 18 and report.dynamic_hw and report.ok(1e-4)
    assert max(_ort_diff(model, report.path)) < 1e-4
    assert capfd.readouterr().out == ""  # nothing on stdout: `tdaf export --json` stays one JSON object


class FixedHead(nn.Module):
    """A model that only takes 16x16 inputs (flatten + linear head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


def test_fixed_size_model_falls_back_to_static_hw(tmp_path: Path) -> None:
    model = FixedHead().eval()
    report = export_model(model, tmp_path / "fixed.onnx", "onnx", (3, 16, 16))
    assert not report.dynamic_hw and report.notes and "fixed 16x16" in report.notes[0]
    assert report.ok(1e-4)
    dims = _dims(report.path)
    assert isinstance(dims[0], str) and dims[2:] == [16, 16]
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 16, 16)  # another batch size still runs
    with torch.no_grad():
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - model(x).numpy()).max() < 1e-4


def test_second_size_is_odd_and_above_minimum() -> None:
    assert second_size((32, 32)) == (45, 37)
    assert second_size((224, 224)) == (315, 259)
    assert second_size((8, 8), min_size=(29, 29)) == (29, 29)


def test_export_errors(r18_checkpoint, tmp_path: Path, capsys) -> None:
    model, ckpt = r18_checkpoint

    def fails(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tdaf export: error:") and "Traceback" not in err and len(err.splitlines()) == 1
        for n in needles:
            assert n in err, err

    out = str(tmp_path / "x.onnx")
    # a checkpoint whose weights belong to another model
    other = _write_checkpoint(tmp_path / "other.pt", "tdaf_resnet18_cifar", {"num_classes": 10},
                              tdaf.create_model("resnet18_cifar", num_classes=10).state_dict())
    fails(["export", "--checkpoint", str(other), "--format", "onnx", "--out", out], "do not fit", "other.pt")
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    fails(["export", "--checkpoint", str(plain), "--format", "onnx", "--out", out], "not a tdaf checkpoint")
    fails(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--format", "onnx", "--out", out], "missing.pt")
    fails(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", out, "--input-size", "4", "4"],
          "--input-size", "minimum input size 8x8")
    fails(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path)], "--out", "folder")
    fails(["export", "--checkpoint", str(ckpt), "--flows", "2", "--format", "onnx", "--out", out], "--flows")
    fails(["export", "--model", "tdaf_nope", "--format", "onnx", "--out", out], "unknown name")
    with pytest.raises(SystemExit):
        main(["export", "--model", "tdaf_resnet18_cifar", "--checkpoint", str(ckpt), "--format", "onnx",
              "--out", out])
    capsys.readouterr()

    class DictOut(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": x}

    with pytest.raises(ValueError, match="returns dict"):
        export_model(DictOut(), tmp_path / "d.onnx", "onnx", (3, 8, 8))
    with pytest.raises(ValueError, match="--format"):
        export_model(model, tmp_path / "d.onnx", "tflite", (3, 32, 32))
