"""Weights the timm way: ``tdaf export --format timm`` writes config.json + model.safetensors, and
``timm.create_model("local-dir:DIR", pretrained=True)`` / ``tdaf.create_model("local-dir:DIR")``
rebuild the model with identical outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import tdaf
from tdaf.cli.main import main
from tdaf.engine.checkpoint import model_from_checkpoint
from tdaf.hub import load_from_folder, save_for_hf


def test_a_trained_tdaf_classifier_round_trips_through_timm(classification_run, tmp_path: Path, capsys) -> None:
    _, ckpt = classification_run
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "timm", "--out", str(out)]) == 0
    assert "every tensor identical" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "tdaf_resnet18_cifar" and config["num_classes"] == 3
    assert config["model_args"]["flows"] == 2 and "pretrained" not in config["model_args"]
    assert config["label_names"] == ["digit0", "digit1", "digit2"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["tdaf"]["task"] == "classification"
    trained, _ = model_from_checkpoint(ckpt)
    x = torch.randn(2, 3, 32, 32)
    by_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_tdaf = tdaf.create_model(f"local-dir:{out}").eval()
    with torch.no_grad():
        expected = trained(x)
        assert torch.equal(by_timm(x), expected) and torch.equal(by_tdaf(x), expected)
    # timm's data config comes from the folder (what the run trained on)
    assert timm.data.resolve_data_config({}, model=by_timm)["input_size"] == (3, 32, 32)
    assert by_tdaf.pretrained_cfg["file"] == str(out) and by_tdaf.pretrained_cfg["flows"] == 2
    # an existing folder is kept unless --overwrite
    assert main(["export", "--checkpoint", str(ckpt), "--format", "timm", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--format", "timm", "--out", str(out), "--overwrite"]) == 0


def test_library_save_and_overrides(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=4, flows=2, anar="anar7").eval()
    save_for_hf(model, tmp_path / "m")
    again = tdaf.create_model(f"local-dir:{tmp_path / 'm'}").eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    with pytest.raises(ValueError, match=r"model\.safetensors does not fit tdaf_resnet18_cifar .*head\.fc"):
        tdaf.create_model(f"local-dir:{tmp_path / 'm'}", num_classes=5)  # an override the weights do not fit
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_from_folder(tmp_path)
    with pytest.raises(ValueError, match="pretrained: got 'x.pth' with 'local-dir:"):
        tdaf.create_model(f"local-dir:{tmp_path / 'm'}", pretrained="x.pth")


def test_a_detector_folder_loads_through_tdaf(detection_run, tmp_path: Path, capsys) -> None:
    """The dense tasks' models are not timm models: the same folder, loaded by tdaf.create_model."""
    _, ckpt = detection_run
    out = tmp_path / "det"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "timm", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "every tensor identical" in text and "timm.create_model" not in text
    config = json.loads((out / "config.json").read_text())
    assert config["tdaf"]["task"] == "detection" and config["architecture"] == "tdaf_fcos_resnet18_fpn"
    trained, _ = model_from_checkpoint(ckpt)
    again = tdaf.create_model(f"local-dir:{out}").eval()
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = trained(images)[0], again(images)[0]
    assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model(f"local-dir:{out}", pretrained=True)
