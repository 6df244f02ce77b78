"""Ecosystem interop: tdaf models in timm's registry, features_only, classifier reset,
torch.fx / TorchScript tracing, and the model zoo table of ``tdaf profile --all``."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from timm.data import resolve_data_config
from torch import nn

import tdaf
from tdaf.cli.main import main as cli_main
from tdaf.models import timm_registry
from tdaf.profile import count_gmacs



def test_every_tdaf_model_is_a_timm_model() -> None:
    ours = set(timm.list_models("tdaf_*"))
    assert set(tdaf.list_models("tdaf_*", task="classification")) <= ours  # timm holds the image classifiers
    assert {"cbam_resnet50", "mobilenetv1", "msconcat_resnet50", "vgg16_cifar"} <= set(timm.list_models())
    # Plain names timm already has stay timm's own models.
    assert "resnet50" in timm_registry.shadowed_by_timm() and "resnet50" not in timm_registry.registered_in_timm()
    assert type(timm.create_model("resnet18")).__module__ == "timm.models.resnet"
    cfg = timm.models.get_pretrained_cfg("tdaf_resnet50")
    assert cfg.input_size == (3, 224, 224) and cfg.mean == (0.485, 0.456, 0.406) and cfg.classifier == "head.fc"
    assert cfg.num_classes == 1000 and not cfg.has_weights
    assert timm.models.get_pretrained_cfg("tdaf_vgg16_cifar").input_size == (3, 32, 32)


def test_timm_create_model_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("tdaf_resnet18_cifar", num_classes=10, flows=2, anar="anar5")
    assert isinstance(model, tdaf.TDAFClassifier) and model.num_classes == 10
    assert model.backbone.flows == 2 and model.backbone.anar_name == "anar5"
    ref = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, flows=2, anar="anar5")
    assert model.state_dict().keys() == ref.state_dict().keys()
    assert resolve_data_config({}, model=model) == {
        "input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616), "crop_pct": 0.875, "crop_mode": "center",
    }
    # A local file of the plain backbone is the only pretrained source: timm's own way to name
    # one, or a path. (resnet18_cifar is torchvision's ResNet-18 with a 3x3 stem.)
    plain = torchvision.models.resnet18(num_classes=10)
    plain.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    path = tmp_path / "r18.pth"
    torch.save(plain.state_dict(), path)
    expected = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, flows=2, anar="anar5", pretrained=path)
    assert torch.equal(expected.backbone.stages[0].conv1.weight, plain.conv1.weight)
    for kwargs in (dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path))), dict(pretrained=str(path))):
        loaded = timm.create_model("tdaf_resnet18_cifar", num_classes=10, flows=2, anar="anar5", **kwargs)
        torch.testing.assert_close(loaded.backbone.stages.state_dict(), expected.backbone.stages.state_dict())
        torch.testing.assert_close(loaded.head.state_dict(), expected.head.state_dict())
    with pytest.raises(ValueError, match="pretrained: tdaf never downloads weights"):
        timm.create_model("tdaf_resnet18_cifar", pretrained=True)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_features_only_returns_the_last_flows_stage_maps() -> None:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar").eval()
    feats = timm.create_model("tdaf_resnet18_cifar", features_only=True).eval()
    assert feats.feature_info.channels() == [64, 128, 256, 512]
    assert feats.feature_info.reduction() == [1, 2, 4, 8]
    feats.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith("backbone.")})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = feats(x)
        assert [tuple(m.shape) for m in maps] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]
        for a, b in zip(maps, model.forward_stages(x)):
            torch.testing.assert_close(a, b)
    c3_c5 = tdaf.create_model("tdaf_mobilenetv1", features_only=True, out_indices=(2, 3, 4))
    assert c3_c5.feature_info.channels() == [256, 512, 1024] and c3_c5.feature_info.reduction() == [8, 16, 32]
    assert [m.shape[1] for m in c3_c5.eval()(torch.randn(1, 3, 64, 64))] == [256, 512, 1024]
    assert timm.create_model("tdaf_resnet50", features_only=True, out_indices=2).feature_info.channels() == [1024,
                                                                                                           2048]
    with pytest.raises(ValueError, match=r"out_indices: got \[4\]; allowed: level indices from -4 to 3"):
        tdaf.create_model("tdaf_resnet18_cifar", features_only=True, out_indices=[4])


@pytest.mark.parametrize("name, jit", [("tdaf_resnet18_cifar", True), ("tdaf_mobilenetv1", False),
                                       ("msconcat_resnet18_cifar", False)])
def test_fx_and_torchscript_tracing(name: str, jit: bool) -> None:
    """torch.fx symbolic tracing (and torch.jit.trace) give the model's outputs, also at a
    size other than the traced one (R2DNS's checks and resizes are trace-safe)."""
    torch.manual_seed(0)
    model = tdaf.create_model(name, flows=2).eval()
    size = max(model.backbone.min_input_size())
    x, other = torch.randn(2, 3, size, size), torch.randn(1, 3, size + 16, size + 8)
    traced = [torch.fx.symbolic_trace(model)]
    with torch.no_grad():
        if jit:
            traced.append(torch.jit.trace(model, x))
        for inp in (x, other):
            expected = model(inp)
            for t in traced:
                torch.testing.assert_close(t(inp), expected)


def test_profile_all_markdown_zoo_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["profile", "--all", "*resnet18_cifar", "--markdown"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("| Model | Input | ANAR | #F | Params (M) | GMACs |")
    rows = {line.split("|")[1].strip(" `"): line.split("|") for line in lines[2:] if line.startswith("| `")}
    assert list(rows) == ["resnet18_cifar", "msconcat_resnet18_cifar", "tdaf_resnet18_cifar"]
    params = {}
    for name, row in rows.items():
        model = tdaf.create_model(name)
        params[name] = sum(p.numel() for p in model.parameters())
        assert float(row[5]) == pytest.approx(params[name] / 1e6, abs=0.006)
        if name != "msconcat_resnet18_cifar":
            assert float(row[6]) == pytest.approx(count_gmacs(model, torch.randn(1, 3, 32, 32)), abs=0.0006)
    added = params["tdaf_resnet18_cifar"] - params["resnet18_cifar"]
    assert rows["tdaf_resnet18_cifar"][7].strip().startswith(f"+{added / 1e6:.3f}M")
    assert rows["tdaf_resnet18_cifar"][3].strip() == "anar3" and rows["tdaf_resnet18_cifar"][4].strip() == "3"
    assert rows["resnet18_cifar"][7].strip() == "-"
    assert cli_main(["profile", "--all", "no_such*"]) == 2
    assert "no registered model matches no_such*" in capsys.readouterr().err
