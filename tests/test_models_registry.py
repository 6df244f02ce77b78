"""One registry: named builder functions, data configs, namespaces; the dense-task
backbone contract (OrderedDict of maps with ``out_channels``); import layering."""

from __future__ import annotations

import ast
import inspect
import sys
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

import tdaf
from tdaf.models import BackboneWithFPN, FeatureMaps, _registry
from tdaf.r2dns import TDAF_DEFAULTS, R2DNS

SRC = Path(tdaf.__file__).parent


def test_every_model_is_a_named_builder_with_a_data_config() -> None:
    for name in tdaf.list_models():
        fn = _registry._MODELS[name]
        module = sys.modules[fn.__module__]
        assert getattr(module, name) is fn, name  # `grep "def tdaf_resnet50"` finds it
        assert f"def {name}(" in inspect.getsource(module)
        assert module.default_cfgs[name] == tdaf.model_cfg(name)
        assert fn.__doc__


def test_builders_do_not_repeat_the_tdaf_defaults() -> None:
    # The defaults are R2DNS's; no signature in models/ restates them (None = "R2DNS's").
    for path in (SRC / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                positional = node.args.args[len(node.args.args) - len(node.args.defaults):]
                pairs = list(zip(positional, node.args.defaults)) + list(zip(node.args.kwonlyargs,
                                                                             node.args.kw_defaults))
                for arg, default in pairs:
                    if arg.arg in TDAF_DEFAULTS:
                        assert isinstance(default, ast.Constant) and default.value is None, (path.name, node.name)


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    models, cfgs, spaces = dict(_registry._MODELS), dict(_registry._CFGS), dict(_registry._NAMESPACES)
    yield
    for d, saved in ((_registry._MODELS, models), (_registry._CFGS, cfgs), (_registry._NAMESPACES, spaces)):
        d.clear()
        d.update(saved)


def test_register_model_forms(scratch_registry: None) -> None:
    @tdaf.register_model(dict(num_classes=3, tdaf=False))
    def my_toy_model(**kwargs: object) -> nn.Module:
        return nn.Linear(2, 3)

    assert tdaf.is_model("my_toy_model") and tdaf.model_cfg("my_toy_model")["num_classes"] == 3
    with pytest.raises(ValueError, match="registered twice"):
        tdaf.register_model()(my_toy_model)

    def cfg(variant: str) -> dict[str, object]:
        if not variant.isdigit():
            raise ValueError(f"model: unknown width {variant!r}")
        return dict(width=int(variant), tdaf=False)

    @tdaf.register_model(cfg, namespace="toy")
    def toy(variant: str, **kwargs: object) -> nn.Module:
        return nn.Linear(2, int(variant))

    assert tdaf.create_model("toy/5").out_features == 5 and tdaf.model_cfg("toy/7")["width"] == 7
    assert tdaf.is_model("toy/5") and not tdaf.is_model("toy/x") and "toy" not in tdaf.list_models()


def test_timm_namespaces_share_the_registry() -> None:
    assert set(_registry._NAMESPACES) >= {"tdaf_timm", "timm"}
    assert tdaf.model_cfg("tdaf_timm/resnet26d")["baseline"] == "timm/resnet26d"
    assert tdaf.model_cfg("timm/resnet26d")["tdaf_variant"] == "tdaf_timm/resnet26d"
    assert not tdaf.is_model("tdaf_timm/tdaf_resnet50")  # our own timm entries are not timm CNNs
    assert not tdaf.is_model("timm/resnet50.a1_in1k")
    with pytest.raises(ValueError, match="unknown timm model 'resnet5' .*closest: tdaf_timm/resnet50"):
        tdaf.create_model("tdaf_timm/resnet5")
    model = tdaf.create_model("tdaf_timm/resnet26d", num_classes=3, flows=2)
    assert model.pretrained_cfg["flows"] == 2 and model.pretrained_cfg["anar"] == TDAF_DEFAULTS["anar"]
    with pytest.raises(ValueError, match="only TDAF models take these"):
        tdaf.create_model("timm/resnet26d", flows=2)


# --------------------------------------------------------------------------- dense-task contract


def test_feature_maps_feed_torchvision_fpn() -> None:
    torch.manual_seed(0)
    feats = tdaf.create_model("tdaf_resnet18", features_only=True, feature_cls="dict", out_indices=(2, 3, 4))
    assert isinstance(feats, FeatureMaps) and feats.is_tdaf
    assert feats.out_channels == [128, 256, 512] and feats.strides == [8, 16, 32]
    x = torch.randn(2, 3, 64, 96)
    out = feats(x)
    assert isinstance(out, OrderedDict) and list(out) == ["0", "1", "2"]
    assert [tuple(v.shape) for v in out.values()] == [(2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]
    fpn = FeaturePyramidNetwork(feats.out_channels, 32)
    assert [tuple(v.shape[1:]) for v in fpn(out).values()] == [(32, 8, 12), (32, 4, 6), (32, 2, 3)]
    # The last flow's maps, as forward() of the classifier's backbone gives them.
    model = tdaf.create_model("tdaf_resnet18").eval()
    feats = FeatureMaps(model, out_indices=2, names=["c4", "c5"]).eval()
    with torch.no_grad():
        stages = model.forward_stages(x)
        maps = feats(x)
    assert list(maps) == ["c4", "c5"]
    torch.testing.assert_close(maps["c5"], stages[3])
    with pytest.raises(ValueError, match="distinct names"):
        FeatureMaps(model, out_indices=2, names=["a"])


def test_backbone_with_fpn_in_fcos() -> None:
    torch.manual_seed(0)
    body = FeatureMaps(tdaf.create_model("tdaf_resnet18", flows=2), out_indices=(2, 3, 4))
    backbone = BackboneWithFPN(body, out_channels=64, extra_blocks=LastLevelP6P7(64, 64))
    assert backbone.out_channels == 64
    fcos = FCOS(backbone, num_classes=3, min_size=64, max_size=64).eval()
    with torch.no_grad():
        detections = fcos([torch.rand(3, 64, 64)])
    assert set(detections[0]) == {"boxes", "scores", "labels"}
    fcos.train()
    target = dict(boxes=torch.tensor([[4.0, 4.0, 40.0, 30.0]]), labels=torch.tensor([1]))
    losses = fcos([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [target, target])
    sum(losses.values()).backward()
    assert body.backbone.attention[0].head.weight.grad is not None


def test_feature_options_need_features_only() -> None:
    with pytest.raises(ValueError, match="only used with features_only=True"):
        tdaf.create_model("resnet18_cifar", feature_cls="dict")
    with pytest.raises(ValueError, match="feature_cls: got 'hook'"):
        tdaf.create_model("resnet18_cifar", features_only=True, feature_cls="hook")
    plain = tdaf.create_model("resnet18_cifar", features_only=True, feature_cls="dict")
    assert not plain.is_tdaf and plain.out_channels == [64, 128, 256, 512]


def test_feature_maps_over_upsampling_r2dns() -> None:
    stages = [nn.Sequential(nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.ReLU()) for _ in range(1)]
    stages += [nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.ReLU())]
    r = R2DNS(stages, [4, 4], [0.5, 0.5], flows=2, in_chans=8)
    feats = FeatureMaps(r)
    assert feats.strides == [0.5, 0.25]
    assert feats(torch.randn(1, 8, 6, 6))["1"].shape == (1, 4, 24, 24)


# --------------------------------------------------------------------------- import layering


def _imports(path: Path) -> tuple[list[str], list[str]]:
    """(every imported tdaf module, those imported inside a function)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    every, local = [], []

    def name_of(node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and name_of(node).startswith("tdaf"):
                local.append(name_of(node))
            if isinstance(node, ast.Import):
                local += [a.name for a in node.names if a.name.startswith("tdaf")]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            every.append(name_of(node))
    return [m for m in every if m.startswith("tdaf")], local


def test_import_layering() -> None:
    files = [SRC / "r2dns.py", SRC / "attention.py", SRC / "export.py", SRC / "profile.py",
             *(SRC / "layers").glob("*.py"), *(SRC / "models").glob("*.py")]
    for path in files:
        every, local = _imports(path)
        assert not local, (path.name, local)
        if path.parent.name == "layers" or path.name == "r2dns.py":
            assert not [m for m in every if m.startswith(("tdaf.models", "tdaf.engine"))], (path.name, every)
        if path.parent.name == "models":
            assert not [m for m in every if m.startswith("tdaf.engine")], (path.name, every)
