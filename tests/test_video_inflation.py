"""2D -> 3D inflation (I3D) of plain and TDAF models: a clip of one repeated image gives the 2D
responses on the frames the temporal padding does not reach, layer by layer: convolutions,
ANAR's transposed convolutions (divided by kernel / stride, not by the kernel), a whole
ANAR, a backbone stage; per-flow MFBN statistics copied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdaf
from tdaf.engine.checkpoint import checkpoint_payload
from tdaf.engine.init_from import init_from
from tdaf.engine.task import get_task
from tdaf.io.files import atomic_save
from tdaf.layers import create_anar
from tdaf.video.models import inflate_kernel, inflate_state_dict


def _constant_clip(x: torch.Tensor, frames: int) -> torch.Tensor:
    return x.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()


def _trained_looking(module: nn.Module) -> None:
    """BatchNorm statistics and affine away from their defaults, so a copy that missed them shows."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def _frame_errors(y3: torch.Tensor, y2: torch.Tensor) -> list[float]:
    return [(y3[:, :, t] - y2).abs().max().item() for t in range(y3.shape[2])]


@pytest.mark.parametrize("transposed", [False, True])
def test_inflated_kernel_keeps_a_constant_clip_on_interior_frames(transposed):
    torch.manual_seed(0)
    if transposed:  # ANAR's up-sampling: 4x4, stride 2, padding 1
        conv2, conv3 = nn.ConvTranspose2d(3, 5, 4, 2, 1), nn.ConvTranspose3d(3, 5, 4, 2, 1)
    else:
        conv2, conv3 = nn.Conv2d(3, 5, 3, 1, 1), nn.Conv3d(3, 5, 3, 1, 1)
    conv3.load_state_dict(inflate_state_dict(conv2.state_dict(), conv3))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y2, y3 = conv2(x), conv3(_constant_clip(x, 8))
    errors = _frame_errors(y3, y2)
    # the first and last output frames meet the zero padding; every other one is exact
    assert max(errors[1:-1]) < 1e-5 and errors[0] > 1e-2 and errors[-1] > 1e-2
    if transposed:  # each output frame meets 4 / 2 = 2 taps: dividing by the kernel's 4 halves it
        wrong = inflate_kernel(conv2.weight.detach(), 4)
        with torch.no_grad():
            y = nn.functional.conv_transpose3d(_constant_clip(x, 8), wrong, conv3.bias, 2, 1)
        torch.testing.assert_close(y[:, :, 3] - conv3.bias.view(1, -1, 1, 1),
                                   (y2 - conv2.bias.view(1, -1, 1, 1)) / 2, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="no inflation keeps a constant clip constant"):
            inflate_kernel(conv2.weight.detach(), 3, stride=2, transposed=True)


def test_inflated_anar_equals_the_2d_anar_on_interior_frames():
    torch.manual_seed(0)
    a2, a3 = create_anar("anar5", 16, dims=2), create_anar("anar5", 16, dims=3)
    _trained_looking(a2)
    nn.init.normal_(a2.head.weight)  # a gate that varies over the map
    a3.load_state_dict(inflate_state_dict(a2.state_dict(), a3))
    a2.eval(), a3.eval()
    x = torch.randn(1, 16, 16, 16)
    with torch.no_grad():
        y2, y3 = a2(x), a3(_constant_clip(x, 16))
    assert y3.shape[2] == 32 and y2.std() > 0.05
    errors = _frame_errors(y3, y2)
    # 2 strided convolutions and 2 deconvolutions: 7 frames at each end meet the padding
    assert max(errors[7:-7]) < 1e-5
    assert min(errors[:3] + errors[-3:]) > 1e-3


@pytest.fixture(scope="module")
def inflated(tmp_path_factory):
    """A 2D TDAF-ResNet-18 (ANAR-5, 3 flows, per-flow statistics) inflated by --init-from into
    the 3D TDAF-ResNet-18 video model."""
    torch.manual_seed(0)
    m2 = tdaf.create_model("tdaf_resnet18", num_classes=4, anar="anar5", attention_init="random")
    _trained_looking(m2)
    for m in m2.modules():  # per-flow statistics that differ between flows
        if hasattr(m, "flows") and getattr(m, "running_mean", None) is not None and m.running_mean.dim() == 2:
            with torch.no_grad():
                m.running_mean += 0.1 * torch.arange(m.flows).unsqueeze(1)
    path = tmp_path_factory.mktemp("c") / "tdaf2d.pt"
    atomic_save(checkpoint_payload("tdaf_resnet18", {"num_classes": 4, "anar": "anar5"}, m2.state_dict(),
                                   task="classification"), path)
    m3 = tdaf.create_model("tdaf_r3d_resnet18", num_classes=4)
    report = init_from(m3, path, get_task("video")())
    return m2.eval(), m3.eval(), report


def test_a_2d_tdaf_checkpoint_inflates_into_the_3d_tdaf_model(inflated):
    m2, m3, report = inflated
    assert not report.new and not report.unused and not report.shape_differs  # every tensor, ANARs included
    assert report.attention["backbone"].startswith("copied")
    assert any(".attention." in k for k in report.copied)
    own2, own3 = m2.state_dict(), m3.state_dict()
    key = "backbone.stages.1.0.bn1.running_mean"
    torch.testing.assert_close(own3["backbone.stages.1.0.conv1.1.running_mean"], own2[key], rtol=0, atol=0)
    assert own2[key].shape == (3, 128)  # per-flow statistics, each flow's own
    deconv = "backbone.attention.0.ups.0.0.weight"
    torch.testing.assert_close(own3[deconv].sum(2), own2[deconv] * 2)  # 4 taps over time, each / (4 / 2)
    # a 2D checkpoint of another task is still refused
    det = checkpoint_payload("fcos_resnet18_fpn", {}, {"x": torch.zeros(1)}, task="detection")
    atomic_save(det, report.path + ".det")
    with pytest.raises(ValueError, match="is a detection checkpoint"):
        init_from(m3, report.path + ".det", get_task("video")())


def test_inflated_stage_and_anar_keep_a_constant_clip_on_interior_frames(inflated):
    m2, m3, _ = inflated
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y2, y3 = m2.backbone.stages[0](x), m3.backbone.stages[0](_constant_clip(x, 32))
        errors = _frame_errors(y3, y2)
        # stem 7x7x7 (3 frames of padding each side), max-pool stride 2, four 3x3x3 convs:
        # output frames 6..9 of 16 never meet the zero padding
        assert max(errors[6:10]) < 1e-4 * y2.abs().max().item()
        assert errors[0] > 1e-2 and errors[-1] > 1e-2
        a2, a3 = m2.backbone.attention[0], m3.backbone.attention[0]
        g2, g3 = a2(y2), a3(_constant_clip(y2, 16))
    assert 0.05 < g2.std() and max(_frame_errors(g3, g2)[7:-7]) < 1e-5
