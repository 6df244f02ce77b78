"""The model zoo: every registered model, the paper's backbones (VGG, ResNeXt, MobileNetV1,
SE-ResNet, CBAM-ResNet), the multi-scale ablation, pretrained files and name errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from timm.layers.cbam import CbamModule
from timm.layers.squeeze_excite import SEModule
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

import tdaf
from tdaf.layers import ANAR, MultiFlowBatchNorm
from tdaf.r2dns import R2DNS


ALL_MODELS = tdaf.list_models(task="classification")
# The heavyweights (> 40M parameters) take seconds each just to initialise their weights on
# 2 cores. By default the sweep builds them on the meta device (no memory, no init) and
# checks their structure, running VGG's forward and backward there (shapes and gradient
# flow); their code paths run for real in the smaller members of each family (ResNet-50,
# ResNeXt-50) and in test_flows1_equals_the_library_model (VGG16-BN). TDAF_FULL_ZOO=1
# runs every model for real.
HEAVY_ARCHS = {"vgg16", "vgg19", "vgg16_bn", "vgg19_bn", "resnet101", "resnet152", "resnext101_32x8d"}
FULL = os.environ.get("TDAF_FULL_ZOO") == "1"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_builds_runs_and_backprops(name: str) -> None:
    cfg = tdaf.model_cfg(name)
    heavy = cfg.get("arch") in HEAVY_ARCHS
    device = "meta" if heavy and not FULL else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = tdaf.create_model(name)
    if not isinstance(model, tdaf.TDAFClassifier):
        pytest.skip(f"{name} is not a classifier (its task's tests cover it)")
    params = sum(p.numel() for p in model.parameters())
    assert (params > 40e6) == heavy, f"{name}: {params / 1e6:.1f}M parameters; update HEAVY_ARCHS"
    assert model.num_classes == cfg["num_classes"]
    assert model.get_classifier() is model.get_submodule(cfg["classifier"])
    assert isinstance(model.get_classifier(), nn.Linear)
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    assert len(model.feature_info) == len(model.backbone.stages)
    stages = len(model.backbone.stages)
    if cfg.get("tdaf"):
        assert model.is_tdaf and len(model.backbone.attention) == stages - 1
        assert all(isinstance(m, MultiFlowBatchNorm) or not isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for m in model.backbone.modules())
    else:
        assert not model.is_tdaf
    if device == "meta" and cfg.get("family") != "vgg":
        return  # meta-device kernels are slow on deep ResNets: structure only
    model.train()
    x = torch.randn(2, 3, *model.backbone.min_input_size(), device=device)
    out = model(x)
    assert out.shape == (2, cfg["num_classes"])
    if device == "cpu":
        assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


def test_plain_models_have_the_library_and_paper_parameter_counts() -> None:
    """Plain zoo models are the torchvision networks (same parameter count), and match the
    paper's Tab. 2/3a counts (the timm-based ones: test_flows1_equals_the_library_model)."""
    with torch.device("meta"):
        references = {
            "vgg16": (torchvision.models.vgg16(), 138.4e6),
            "vgg19": (torchvision.models.vgg19(), 143.7e6),
            "vgg16_bn": (torchvision.models.vgg16_bn(), None),
            "vgg19_bn": (torchvision.models.vgg19_bn(), None),
            "resnext50_32x4d": (torchvision.models.resnext50_32x4d(), 25.0e6),
            "resnext101_32x8d": (torchvision.models.resnext101_32x8d(), 88.8e6),
        }
        for name, (ref, paper) in references.items():
            ours = sum(p.numel() for p in tdaf.create_model(name).parameters())
            assert ours == sum(p.numel() for p in ref.parameters()), name
            if paper is not None:
                assert ours == pytest.approx(paper, abs=0.05e6), name


def _stats(model: nn.Module, size: int, steps: int = 2) -> nn.Module:
    """Give BatchNorm running statistics that differ from their initial (0, 1)."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(2, 3, size, size) * 2 + 0.5)
    return model.eval()


def _arbitrary_weights(model: nn.Module) -> nn.Module:
    """Random weights without the seconds that VGG's 100M-weight layer takes to initialise:
    large tensors are tiled from a small random block (equality tests only need arbitrary values)."""
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dtype == torch.long:
                t.fill_(3)
            elif t.dim() == 2 and t.numel() > 1_000_000:
                block = torch.randn(t.shape[0], 512) * (1.0 / t.shape[1]) ** 0.5
                t.copy_(block.repeat(1, t.shape[1] // 512 + 1)[:, : t.shape[1]])
            else:
                t.copy_(torch.randn_like(t) * 0.1 + (1.0 if t.dim() == 1 else 0.0))
    return model


def _library_model(name: str) -> nn.Module:
    if name == "vgg16_bn_cifar":
        with torch.device("meta"):
            net = torchvision.models.vgg16_bn(num_classes=10)
        return _arbitrary_weights(net)
    if name == "resnext50_32x4d":
        return torchvision.models.resnext50_32x4d(num_classes=10)
    if name == "mobilenetv1":
        return timm.create_model("mobilenetv1_100", num_classes=10)
    if name == "seresnet50":
        return timm.create_model("seresnet50", num_classes=10)
    return ResNet(block=Bottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer="cbam"), num_classes=10)


@pytest.mark.parametrize("name", ["vgg16_bn_cifar", "resnext50_32x4d", "mobilenetv1", "seresnet50", "cbam_resnet50"])
def test_flows1_equals_the_library_model(name: str, tmp_path: Path) -> None:
    """A plain torchvision/timm model's state dict, saved to a file, loads into the TDAF
    model with one flow, which then computes exactly what the library model computes."""
    torch.manual_seed(0)
    size = 32
    ref = _stats(_library_model(name), size)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    model = tdaf.create_model("tdaf_" + name, flows=1, num_classes=10, pretrained=path).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    if name in ("seresnet50", "cbam_resnet50"):
        # Paper Tab. 3b: TDAF on top of SE / CBAM blocks, whose bottom-up attention stays in the blocks.
        block_attention = SEModule if name == "seresnet50" else CbamModule
        assert sum(isinstance(m, block_attention) for m in model.backbone.modules()) == 16
        assert model.backbone.channels == [256, 512, 1024, 2048]
    if name == "cbam_resnet50":
        # CBAM's spatial gate normalises with timm's BatchNormAct2d: it becomes MFBN, keeping its activation.
        spatial = model.backbone.stages[0].layer1[0].se.spatial.conv.bn
        assert isinstance(spatial.bn, MultiFlowBatchNorm) and isinstance(spatial.act, nn.Identity)
    # The same file in the TDAF model with its default flows: every flow starts from the file's statistics.
    if name == "mobilenetv1":
        plain = tdaf.create_model(name, num_classes=10, pretrained=path).eval()
        with torch.no_grad():
            torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
        full = tdaf.create_model("tdaf_" + name, num_classes=10, pretrained=path)
        mfbn = [m for m in full.backbone.stages.modules() if isinstance(m, MultiFlowBatchNorm)]
        assert mfbn and all(torch.equal(m.running_mean[0], m.running_mean[1]) for m in mfbn)
        assert any(m.running_mean.abs().sum() > 0 for m in mfbn)
        out = _stats(full, 64, steps=1).train()(torch.randn(2, 3, 64, 64))
        out.sum().backward()
        assert all(p.grad is not None for p in full.parameters())


def test_vgg_stages_follow_the_max_pools() -> None:
    """Paper §4.1: ANAR after each max-pool: 5 stages each ending in its pool, stride 2 each."""
    with torch.device("meta"):
        model = tdaf.create_model("tdaf_vgg19_bn")
    assert model.backbone.channels == [64, 128, 256, 512, 512]
    assert model.backbone.strides == [2, 2, 2, 2, 2]
    assert all(isinstance(list(s.children())[-1], nn.MaxPool2d) for s in model.backbone.stages)
    convs = [sum(isinstance(m, nn.Conv2d) for m in s.modules()) for s in model.backbone.stages]
    assert convs == [2, 2, 4, 4, 4]
    assert len(model.backbone.attention) == 4  # g_5 reads flow N-1's stage 5, which no flow N-1 runs
    assert model.backbone.min_input_size() == (32, 32)
    assert model.head_hidden_size == 4096
    x = torch.randn(2, 3, 32, 32, device="meta")
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 4096)
    with torch.device("meta"):
        model.reset_classifier(5)
        assert model.num_classes == 5 and model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, 4096)
    with pytest.raises(ValueError, match="global_pool: got 'max'"):
        model.reset_classifier(5, global_pool="max")


def test_mobilenet_uses_depthwise_anar_and_two_flows() -> None:
    """Paper Tab. 3a: MobileNetV1 with depthwise ANAR-3, 2 flows by default."""
    model = tdaf.create_model("tdaf_mobilenetv1")
    assert model.backbone.flows == 2
    assert model.backbone.channels == [64, 128, 256, 512, 1024] and model.backbone.strides == [2, 2, 2, 2, 2]
    ups = [m for a in model.backbone.attention for m in a.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert ups and all(m.groups == m.in_channels == m.out_channels for m in ups)
    dense = tdaf.create_model("tdaf_mobilenetv1", depthwise=False)
    count = lambda m: sum(p.numel() for a in m.backbone.attention for p in a.parameters())  # noqa: E731
    assert count(model) < count(dense)


def test_multiscale_ablation_has_no_attention() -> None:
    """Paper §4.5: the same flows with no ANAR; the pooled last maps of all flows are concatenated."""
    torch.manual_seed(0)
    model = tdaf.create_model("msconcat_resnet18_cifar", flows=3)
    assert isinstance(model.backbone, R2DNS) and model.backbone.anar_name is None and not model.is_tdaf
    assert not any(isinstance(m, ANAR) for m in model.modules())
    assert not any("attention" in n or "anar" in n for n, _ in model.named_parameters())
    plain = tdaf.create_model("resnet18_cifar")
    head = sum(p.numel() for p in model.head.parameters())
    assert sum(p.numel() for p in model.parameters()) - head == sum(
        p.numel() for p in plain.backbone.parameters())
    # flows 1, 2, 3 end at stages 2, 3, 4 (Eq. 1): 128 + 256 + 512 features.
    assert model.num_features == 896 and model.head.fc.in_features == 896
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        flows = model.backbone.forward_flows(x)
        assert [len(f) for f in flows] == [2, 3, 4]
        pooled = torch.cat([f[-1].mean((2, 3)) for f in flows], 1)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
        torch.testing.assert_close(model(x), model.head.fc(pooled))
    # One flow is the plain network (same stage weights).
    one = tdaf.create_model("msconcat_resnet18_cifar", flows=1).eval()
    plain.eval()
    one.backbone.load_state_dict(plain.backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(one.forward_features(x), plain.forward_features(x))
    with pytest.raises(ValueError, match="anar: 'msconcat_resnet18_cifar' does not take these"):
        tdaf.create_model("msconcat_resnet18_cifar", anar="anar5")
    with pytest.raises(ValueError, match="flows: got 5"):
        tdaf.create_model("msconcat_resnet18_cifar", flows=5)


def test_unknown_names_list_the_closest() -> None:
    with pytest.raises(ValueError, match=r"unknown name 'tdaf_vgg61'; closest: [a-z0-9_, ]*tdaf_vgg16[,\s]"):
        tdaf.create_model("tdaf_vgg61")
    with pytest.raises(ValueError, match=r"unknown name 'tdaf_resnext50'; closest: .*tdaf_resnext50_32x4d"):
        tdaf.model_cfg("tdaf_resnext50")
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet27d'.*closest: tdaf_timm/resnet26d"):
        tdaf.create_model("tdaf_timm/resnet27d")
    assert not tdaf.is_model("timm/resnet27d") and tdaf.is_model("timm/resnet26d")
    with pytest.raises(ValueError, match="only TDAF models take these; 'mobilenetv1' is a plain model"):
        tdaf.create_model("mobilenetv1", flows=2)


def test_pretrained_file_for_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit tdaf_mobilenetv1.*missing keys: conv_stem\.weight.*"
                                         r"unexpected keys: conv1\.weight"):
        tdaf.create_model("tdaf_mobilenetv1", pretrained=path)
    with pytest.raises(FileNotFoundError, match="pretrained: file not found"):
        tdaf.create_model("tdaf_seresnet50", pretrained=tmp_path / "none.pth")
