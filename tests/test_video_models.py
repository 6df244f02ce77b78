"""3D-ResNets (Hara et al.) and their TDAF forms: counts, shapes, flows=1, inflation, input errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import tdaf
from tdaf.layers.anar import ANAR
from tdaf.profile import count_params

TINY = (2, 3, 16, 32, 32)


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return tdaf.create_model(name, **kwargs)


def _anar5_3d(c: int, floor: int = 1) -> int:
    """Table 1, ANAR-5 with 3x3x3 down and 4x4x4 up kernels; BN adds 2 per channel. ``floor``:
    no layer narrower (``anar_min_width``; the library's default is 8)."""
    t, d, u1, u2 = (max(c // k, floor) for k in (4, 8, 16, 32))
    return (c * t + 2 * t                 # 1x1x1 trans c -> c/4
            + 27 * t * d + 2 * d          # 3x3x3 /2   c/4 -> c/8
            + 64 * d * u1 + 2 * u1        # 4x4x4 x2   c/8 -> c/16
            + t * u1 + 2 * u1             # SC 1x1x1   c/4 -> c/16
            + 64 * u1 * u2 + 2 * u2       # 4x4x4 x2   c/16 -> c/32
            + u2 + 1)                     # 1x1x1 c/32 -> 1, with bias


def test_hara_counts_and_tdaf_adds_table1_anar5_on_stages_1_to_3():
    assert count_params(_meta("r3d_resnet50")) == 47_018_576  # Hara's 3D-ResNet-50, 400 classes (paper: 47.019M)
    for depth in (50, 101):
        plain, tdaf_model = _meta(f"r3d_resnet{depth}"), _meta(f"tdaf_r3d_resnet{depth}")
        assert tdaf_model.backbone.anar_name == "anar5" and tdaf_model.backbone.flows == 3
        added = count_params(tdaf_model) - count_params(plain)
        assert added == sum(_anar5_3d(c) for c in (256, 512, 1024))  # no g_4 with 4 stages
    # flows beyond 2 add no parameters (ANARs are shared by the flows)
    assert count_params(_meta("tdaf_r3d_resnet50", flows=4)) == count_params(_meta("tdaf_r3d_resnet50"))


def test_3d_anar_kernels_are_3x3x3_down_and_4x4x4_up():
    anar = _meta("tdaf_r3d_resnet18").backbone.attention[0]
    assert isinstance(anar, ANAR) and anar.dims == 3
    assert count_params(anar) == _anar5_3d(64, floor=8)  # c/16, c/32 = 4, 2 channels -> 8
    assert count_params(_meta("tdaf_r3d_resnet18", anar_min_width=1).backbone.attention[0]) == _anar5_3d(64)
    convs = [m for m in anar.modules() if isinstance(m, nn.Conv3d)]
    deconvs = [m for m in anar.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert sorted({m.kernel_size for m in convs}) == [(1, 1, 1), (3, 3, 3)]
    assert [m.kernel_size for m in deconvs] == [(4, 4, 4), (4, 4, 4)]
    x = torch.randn(1, 64, 4, 6, 6)
    assert tdaf.create_anar("anar5", 64, dims=3)(x).shape == (1, 1, 8, 12, 12)


def test_output_shapes_and_registry():
    torch.manual_seed(0)
    for name in ("r3d_resnet10_w16", "tdaf_r3d_resnet10_w16"):
        model = tdaf.create_model(name, num_classes=6).eval()
        with torch.no_grad():
            assert model(torch.randn(TINY)).shape == (2, 6)
            stages = model.forward_stages(torch.randn(TINY))
        # T, H, W all halve per stage after the stem (stride 2 x 4 x 4)
        assert [tuple(s.shape[2:]) for s in stages] == [(8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)]
        assert tdaf.model_cfg(name)["task"] == "video"
    assert "r3d_resnet50" in tdaf.list_models(task="video")
    assert not any("r3d" in n for n in tdaf.list_models(task="classification"))
    with pytest.raises(ValueError, match="only TDAF models"):
        tdaf.create_model("r3d_resnet18", flows=2)


def test_one_flow_is_exactly_the_plain_3d_resnet():
    torch.manual_seed(0)
    plain = tdaf.create_model("r3d_resnet10_w16", num_classes=5)
    for m in plain.modules():  # non-trivial statistics, so a wrong flow index would show
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    one = tdaf.create_model("tdaf_r3d_resnet10_w16", num_classes=5, flows=1)
    one.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(TINY)
    with torch.no_grad():
        torch.testing.assert_close(one.eval()(x), plain.eval()(x), rtol=0, atol=1e-6)


def test_inflated_2d_weights_give_the_2d_features_on_a_still_clip(tmp_path):
    torch.manual_seed(0)
    net2d = torchvision.models.resnet18(num_classes=7).eval()
    for m in net2d.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(net2d.state_dict(), path)
    model = tdaf.create_model("r3d_resnet18", num_classes=7, pretrained=path).eval()
    assert torch.equal(model.head.fc.weight, net2d.fc.weight)
    stem = model.backbone.stages[0].conv1.weight
    assert stem.shape == (64, 3, 7, 7, 7)
    torch.testing.assert_close(stem.sum(dim=2), net2d.conv1.weight)  # repeated along T, divided by 7

    image = torch.randn(1, 3, 32, 32)
    clip = image[:, :, None].expand(-1, -1, 32, -1, -1).contiguous()  # one frame, 32 times
    with torch.no_grad():
        y2d = net2d.layer1(net2d.maxpool(net2d.relu(net2d.bn1(net2d.conv1(image)))))
        y3d = model.backbone.stages[0](clip)  # stem + layer1: T 32 -> 16
    assert y3d.shape == (1, 64, 16, 8, 8)
    # zero padding in time only touches frames near the borders
    for t in range(6, 10):
        torch.testing.assert_close(y3d[:, :, t], y2d, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(y3d[:, :, 0], y2d, atol=1e-3)

    one = tdaf.create_model("tdaf_r3d_resnet18", num_classes=7, pretrained=path, flows=2).eval()
    bn = one.backbone.stages[0].bn1
    assert bn.running_mean.shape == (2, 64)
    assert torch.equal(bn.running_mean[1], net2d.bn1.running_mean)  # every flow starts from the 2D statistics

    with pytest.raises(ValueError, match="does not fit r3d_resnet34"):
        tdaf.create_model("r3d_resnet34", pretrained=path)


def test_clip_layout_and_size_errors_state_the_minimum():
    model = tdaf.create_model("tdaf_r3d_resnet10_w16", num_classes=3).eval()
    assert model.backbone.min_input_size() == (16, 32, 32)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\).*minimum T x H x W is 16x32x32"):
        model(torch.randn(3, 16, 32, 32))
    with pytest.raises(ValueError, match=r"T x H x W = 8x32x32 .*minimum is 16x32x32"):
        model(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="channels second"):
        model(torch.randn(1, 16, 32, 32, 3))
