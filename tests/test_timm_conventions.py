"""timm's model conventions on tdaf models, checked with timm's own functions."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2

import tdaf
from tdaf.classification.data.transforms import eval_transform
from tdaf.models import timm_registry
from tdaf.models.timm_registry import register_in_timm


def _seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return tdaf.create_model(name, **kwargs)


@pytest.mark.parametrize("name", ["tdaf_resnet18_cifar", "resnet18_cifar", "tdaf_vgg16_bn_cifar",
                                  "msconcat_resnet18_cifar", "tdaf_mobilenetv1"])
def test_unknown_argument_is_a_type_error(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        timm.create_model(name, no_such_option=1)


def test_feature_levels_are_numbered_as_timms_resnet() -> None:
    ref = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    ours = timm.create_model("tdaf_resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    assert ours.feature_info.out_indices == ref.feature_info.out_indices == (1, 2, 3, 4)
    assert ours.feature_info.channels() == ref.feature_info.channels() == [256, 512, 1024, 2048]
    assert ours.feature_info.reduction() == ref.feature_info.reduction() == [4, 8, 16, 32]
    # Level 0 is timm's stem (act1), which R2DNS computes inside stage 1.
    assert ours.feature_info.get("reduction", 0) == ref.feature_info.get("reduction", 0) == 2
    with pytest.raises(ValueError, match=r"level 0 \(backbone\.stages\.0\.relu, reduction 2\) is computed inside stage 1"):
        tdaf.create_model("tdaf_resnet18", features_only=True, out_indices=(0, 1, 2, 3, 4))
    # The default is every stage output; the dict form uses the same numbers.
    assert tdaf.create_model("tdaf_resnet18", features_only=True).feature_info.out_indices == (1, 2, 3, 4)
    maps = tdaf.create_model("tdaf_resnet18", features_only=True, feature_cls="dict", out_indices=(2, 4))
    assert maps.out_indices == (2, 4) and maps.out_channels == [128, 512] and maps.strides == [8, 32]


def test_timm_backbone_levels_keep_timms_numbers() -> None:
    ref = timm.create_model("efficientnet_b0", features_only=True, out_indices=(2, 3, 4))
    ours = tdaf.create_model("tdaf_timm/efficientnet_b0", features_only=True, out_indices=(2, 3, 4))
    assert ours.feature_info.channels() == ref.feature_info.channels()
    assert ours.feature_info.reduction() == ref.feature_info.reduction()
    with torch.no_grad():
        shapes = [m.shape for m in ours.eval()(torch.randn(1, 3, 64, 64))]
        assert shapes == [m.shape for m in ref.eval()(torch.randn(1, 3, 64, 64))]
    # MobileNetV1's five stages are timm's five levels: no stem level.
    assert tdaf.create_model("tdaf_mobilenetv1", features_only=True).feature_info.out_indices == (0, 1, 2, 3, 4)


def test_forward_intermediates_follows_timms_signature_and_semantics() -> None:
    ref_sig = inspect.signature(timm.create_model("resnet18").forward_intermediates)
    model = _seeded("tdaf_resnet18", flows=2).eval()
    sig = inspect.signature(model.forward_intermediates)
    assert {k: p.default for k, p in sig.parameters.items()} == {
        k: p.default for k, p in ref_sig.parameters.items() if k in sig.parameters}
    assert set(sig.parameters) == {"x", "indices", "norm", "stop_early", "output_fmt", "intermediates_only"}
    x = torch.randn(1, 3, 64, 64)
    ref = timm.create_model("resnet18").eval()
    with torch.no_grad():
        stages = model.forward_stages(x)
        final, inter = model.forward_intermediates(x, indices=(1, 3))
        ref_final, ref_inter = ref.forward_intermediates(x, indices=(1, 3))
        assert final.shape == ref_final.shape and [t.shape for t in inter] == [t.shape for t in ref_inter]
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(inter[1], stages[2])
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in last2] == [256, 512]
        msc = _seeded("msconcat_resnet18_cifar").eval()  # its features: every flow's last map, concatenated
        small = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(msc.forward_intermediates(small)[0], msc.forward_features(small))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_grad_checkpointing_gives_the_same_gradients_and_statistics() -> None:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    results = []
    for enable in (False, True):
        model = _seeded("tdaf_resnet18_cifar", flows=2, anar="anar2").train()
        calls = []
        model.backbone.stages[1][0].conv1.register_forward_hook(lambda *_: calls.append(1))
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((grads, {k: v.clone() for k, v in model.state_dict().items()}, len(calls)))
    (g0, s0, c0), (g1, s1, c1) = results
    assert c0 == 2 and c1 == 4  # stage 2 runs in both flows; recomputed once each in the backward pass
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)
    for k in s0:  # the recomputation neither switches flows nor updates statistics again
        torch.testing.assert_close(s1[k], s0[k])
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing and "forward" not in vars(model.backbone.stages[0])


def test_group_matcher_drives_timms_layer_decay() -> None:
    model = _seeded("tdaf_resnet18_cifar", flows=2)
    groups = timm.models.group_parameters(model, model.group_matcher())
    names = {n: i for i, members in groups.items() for n in members}
    assert names["backbone.stages.0.conv1.weight"] == names["backbone.attention.0.head.weight"] == 0
    assert names["backbone.stages.1.0.conv1.weight"] == names["backbone.attention.1.head.weight"]
    assert names["backbone.stages.1.0.conv1.weight"] < names["backbone.stages.3.0.conv1.weight"]
    assert names["head.fc.weight"] > names["backbone.stages.3.0.conv1.weight"]
    opt = create_optimizer_v2(model, "sgd", lr=1.0, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert scale[id(params["head.fc.weight"])] == 1.0
    assert scale[id(params["backbone.stages.0.conv1.weight"])] < scale[id(params["backbone.stages.3.0.conv1.weight"])]
    assert model.group_matcher(coarse=True) == model.group_matcher()


def test_in_chans_drop_path_and_output_stride_on_torchvision_families(tmp_path) -> None:
    model = timm.create_model("tdaf_resnet18_cifar", in_chans=1, num_classes=3).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert model.backbone.stages[0].conv1.in_channels == 1
    path = tmp_path / "plain.pth"
    plain = torchvision.models.resnet18()
    torch.save(plain.state_dict(), path)
    gray = tdaf.create_model("resnet18", in_chans=1, pretrained=path)
    # timm's adaptation of a pretrained RGB conv to one channel: the sum over input channels.
    torch.testing.assert_close(gray.backbone.stages[0].conv1.weight, plain.conv1.weight.sum(1, keepdim=True))
    vgg = tdaf.create_model("tdaf_vgg16_bn_cifar", in_chans=1, flows=2).eval()
    assert vgg(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="drop_path_rate: got 0.1; 'tdaf_resnet18_cifar' is built from torchvision"):
        timm.create_model("tdaf_resnet18_cifar", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="output_stride: got 16; 'tdaf_vgg16_bn_cifar' only has its native"):
        tdaf.create_model("tdaf_vgg16_bn_cifar", output_stride=16)
    tdaf.create_model("resnet18_cifar", drop_path_rate=0.0, output_stride=8)  # the no-op values
    # The timm-based families take them natively.
    assert tdaf.create_model("tdaf_mobilenetv1", drop_path_rate=0.1, in_chans=1)(torch.randn(1, 1, 64, 64)).shape == (
        1, 1000)


@pytest.mark.parametrize("size", [(32, 32), (50, 37)])
def test_cifar_models_eval_transform_in_timm_is_tdafs(size: tuple[int, int]) -> None:
    model = timm.create_model("tdaf_resnet18_cifar")
    config = resolve_data_config({}, model=model)
    assert config["crop_pct"] == 1.0 and config["input_size"] == (3, 32, 32)
    theirs = create_transform(**config)
    cfg = model.pretrained_cfg
    ours = eval_transform(dict(input_size=cfg["input_size"], mean=cfg["mean"], std=cfg["std"], resize=None))
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    torch.testing.assert_close(theirs(image), ours(image), rtol=0, atol=1e-6)


def test_namespaced_models_reach_timm_through_an_alias() -> None:
    # timm reads "<namespace>/<name>" as a Hugging Face Hub id and refuses it without downloading.
    with pytest.raises(ValueError, match="Hugging Face Hub"):
        timm.create_model("tdaf_timm/regnety_002")
    alias = register_in_timm("tdaf_timm/regnety_002")
    assert alias == "tdaf_timm__regnety_002" and register_in_timm("tdaf_timm/regnety_002") == alias
    assert timm.is_model(alias) and alias in timm_registry.registered_in_timm()
    model = timm.create_model(alias, num_classes=3, flows=2)
    assert model.is_tdaf and model.backbone.flows == 2 and model.num_classes == 3
    assert model.pretrained_cfg["timm_model"] == "regnety_002"
    assert register_in_timm("tdaf_resnet18_cifar") == "tdaf_resnet18_cifar"
    with pytest.raises(ValueError, match="unknown timm model"):
        register_in_timm("tdaf_timm/no_such_net")


def test_only_public_timm_names_are_imported() -> None:
    source = inspect.getsource(timm_registry)
    assert "timm.models._" not in source
