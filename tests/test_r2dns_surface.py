"""R2DNS's public surface: flows without attention, per-flow outputs, attention recording,
frozen MFBN, up-sampling stages (SimpleBaseline's head) and 3-D inputs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import tdaf
from tdaf.profile import count_params
from tdaf.export import export_model, second_size
from tdaf.layers import ANAR, FrozenMultiFlowBatchNorm, MultiFlowBatchNorm, convert_to_mfbn, freeze_mfbn
from tdaf.r2dns import TDAF_ARCH_KEYS, TDAF_DEFAULTS, R2DNS, min_input_size


def _stages(channels: list[int], strides: list[int], dims: int = 2, cin: int = 3) -> list[nn.Module]:
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    out = []
    for c, s in zip(channels, strides):
        out.append(nn.Sequential(conv(cin, c, 3, stride=s, padding=1, bias=False), bn(c), nn.ReLU()))
        cin = c
    return out


def _train_stats(module: nn.Module, x: torch.Tensor) -> None:
    module.train()
    with torch.no_grad():
        for _ in range(2):
            module(x)
    module.eval()


# --------------------------------------------------------------------------- defaults, anar=None


def test_defaults_live_in_one_place() -> None:
    assert TDAF_DEFAULTS == dict(flows=3, anar="anar3", eta=0.5, downsample="avg", attention_init="auto",
                                 anar_min_width=8, anar_up="deconv")
    assert TDAF_ARCH_KEYS == ("flows", "anar", "eta", "downsample", "anar_min_width", "anar_up")
    r = R2DNS(_stages([4, 4, 4], [2, 2, 2]), [4] * 3, [2] * 3)
    assert (r.flows, r.anar_name, r.eta, r.down.mode, r.anar_min_width, r.anar_up) == tuple(
        TDAF_DEFAULTS[k] for k in TDAF_ARCH_KEYS)
    # the paper's settings are always recorded, the options beyond it where they differ from Table 1
    paper = TDAF_ARCH_KEYS[:4]
    model = tdaf.create_model("tdaf_resnet18_cifar")
    assert {k: model.pretrained_cfg[k] for k in paper} == {k: TDAF_DEFAULTS[k] for k in paper}
    assert model.pretrained_cfg["anar_min_width"] == 8 and "anar_up" not in model.pretrained_cfg
    model = tdaf.create_model("tdaf_resnet18_cifar", anar_min_width=1, anar_up="resize")
    assert "anar_min_width" not in model.pretrained_cfg and model.pretrained_cfg["anar_up"] == "resize"
    # the floor changes narrow stages only: ANAR-3 on 64 channels (c/32 = 2) gets 8, on 256 (c/32 = 8) nothing
    narrow = tdaf.create_model("tdaf_resnet18_cifar", anar_min_width=1)
    assert count_params(tdaf.create_model("tdaf_resnet18_cifar")) > count_params(narrow)
    assert count_params(tdaf.create_model("tdaf_resnet50", anar_min_width=1)) == count_params(
        tdaf.create_model("tdaf_resnet50"))


def test_anar_none_runs_independent_flows() -> None:
    torch.manual_seed(0)
    r = R2DNS(_stages([4, 8, 8], [2, 2, 2]), [4, 8, 8], [2, 2, 2], flows=3, anar=None).eval()
    assert len(r.attention) == 0 and not r.has_attention and "anar=None" in repr(r)
    assert not any(isinstance(m, ANAR) for m in r.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        flows = r.forward_flows(x)
    assert [len(f) for f in flows] == [1, 2, 3]
    # Flow n alone on its input, with flow n's statistics: no attention connects the flows.
    for n, outs in enumerate(flows, start=1):
        for m in r.modules():
            if isinstance(m, MultiFlowBatchNorm):
                m.flow = n - 1
        y = x
        for _ in range(3 - n):
            y = F.avg_pool2d(y, 2, 2, ceil_mode=True)
        for l, out in enumerate(outs):
            y = r.stages[l](y)
            torch.testing.assert_close(out, y)
    with pytest.raises(ValueError, match="without attention"):
        with tdaf.record_attention(r):
            pass


def test_forward_flows_last_flow_is_forward() -> None:
    torch.manual_seed(0)
    r = R2DNS(_stages([4, 8, 8, 8], [2, 2, 2, 2]), [4, 8, 8, 8], [2] * 4, flows=3, anar="anar2").eval()
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        flows = r.forward_flows(x)
        last = r(x)
    assert [len(f) for f in flows] == [2, 3, 4]
    for a, b in zip(flows[-1], last):
        torch.testing.assert_close(a, b)
    assert [f[0].shape[-2:] for f in flows] == [(5, 5), (10, 9), (20, 18)]


def test_record_attention_context_manager() -> None:
    r = R2DNS(_stages([4, 4, 4], [2, 2, 2]), [4] * 3, [2] * 3, flows=2)
    with r.record_attention() as maps:
        r(torch.randn(1, 3, 16, 16))
        with pytest.raises(RuntimeError, match="already being recorded"):
            with r.record_attention():
                pass
    assert sorted(maps) == [(1, 2), (2, 2)]
    r(torch.randn(1, 3, 16, 16))  # no longer recording
    assert sorted(maps) == [(1, 2), (2, 2)]
    with tdaf.record_attention(nn.Sequential(r)) as maps2:  # the model-level API finds the R2DNS
        r(torch.randn(1, 3, 16, 16))
    assert maps2.keys() == maps.keys()


# --------------------------------------------------------------------------- frozen MFBN


def test_frozen_mfbn_uses_running_stats_in_train_mode() -> None:
    torch.manual_seed(0)
    mf = MultiFlowBatchNorm(6, flows=3)
    mf.weight.data.uniform_(0.5, 1.5)
    mf.bias.data.uniform_(-1, 1)
    for flow in range(3):
        mf.flow = flow
        _train_stats(mf, torch.randn(8, 6, 4, 4) * (flow + 1) + flow)
    frozen = freeze_mfbn(mf)
    assert isinstance(frozen, FrozenMultiFlowBatchNorm)
    assert not list(frozen.parameters())  # nothing trainable
    torch.testing.assert_close(frozen.running_mean, mf.running_mean, rtol=0, atol=0)  # per-flow stats kept
    assert not torch.allclose(frozen.running_mean[0], frozen.running_mean[2])
    x = torch.randn(4, 6, 5, 5)
    for flow in range(3):
        mf.flow = frozen.flow = flow
        mf.eval()
        frozen.train()
        train_out = frozen(x)
        frozen.eval()
        torch.testing.assert_close(train_out, frozen(x), rtol=0, atol=0)
        torch.testing.assert_close(train_out, mf(x))
    before = frozen.running_mean.clone()
    frozen.train()(x)
    assert torch.equal(before, frozen.running_mean)
    # An MFBN state dict (with batch counters) loads into the frozen layer.
    again = FrozenMultiFlowBatchNorm(6, flows=3)
    again.load_state_dict(mf.state_dict())
    torch.testing.assert_close(again.running_var, mf.running_var, rtol=0, atol=0)


def test_freeze_mfbn_on_a_tdaf_model_keeps_outputs_and_flows() -> None:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=4, flows=3)
    _train_stats(model, torch.randn(4, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        freeze_mfbn(model)
        assert not any(isinstance(m, MultiFlowBatchNorm) for m in model.modules())
        assert all(m.running_mean.shape[0] == 3 for m in model.modules() if isinstance(m, FrozenMultiFlowBatchNorm))
        model.train()  # frozen statistics: train mode gives the eval output
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_convert_to_mfbn_turns_frozen_bn_into_frozen_mfbn() -> None:
    bn = nn.BatchNorm2d(5)
    _train_stats(bn, torch.randn(8, 5, 3, 3) * 3 + 1)
    fbn = FrozenBatchNorm2d(5)
    fbn.load_state_dict(bn.state_dict(), strict=False)
    net = nn.Sequential(nn.Conv2d(3, 5, 1), fbn)
    convert_to_mfbn(net, 2)
    frozen = net[1]
    assert isinstance(frozen, FrozenMultiFlowBatchNorm) and frozen.flows == 2
    torch.testing.assert_close(frozen.running_mean, bn.running_mean.expand(2, -1), rtol=0, atol=0)
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(frozen.train()(x), fbn(x))


# --------------------------------------------------------------------------- up-sampling stages


def _deconv_stages(cin: int, width: int, n: int = 3) -> list[nn.Module]:
    """SimpleBaseline's head: 4x4 stride-2 ConvTranspose2d + BN + ReLU, three times."""
    out = []
    for _ in range(n):
        out.append(nn.Sequential(nn.ConvTranspose2d(cin, width, 4, stride=2, padding=1, bias=False),
                                 nn.BatchNorm2d(width), nn.ReLU()))
        cin = width
    return out


@pytest.mark.parametrize("size", [(8, 12), (7, 5)])
def test_upsampling_stages_attention_aligns(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    r = R2DNS(_deconv_stages(16, 8), [8] * 3, [0.5] * 3, flows=3, anar="anar3", in_chans=16)
    assert r.min_input_size() == (1, 1)
    raw: list[tuple[tuple[int, ...], int]] = []
    for l, g in enumerate(r.attention):
        g.register_forward_hook(lambda _m, _i, out, l=l: raw.append((tuple(out.shape[2:]), l)))
    x = torch.randn(2, 16, *size)  # the C5 map
    with tdaf.record_attention(r) as maps:
        flows = r.forward_flows(x)
    h, w = size
    assert [tuple(o.shape[2:]) for o in flows[-1]] == [(2 * h, 2 * w), (4 * h, 4 * w), (8 * h, 8 * w)]
    for n in (2, 3):  # flow n-1's stage-l output is half of flow n's; ANAR doubles it
        for l in range(n - 1):
            assert maps[(l + 1, n)].shape[2:] == flows[n - 1][l].shape[2:]
    if h % 4 == 0 and w % 4 == 0:  # every flow input halves exactly: ANAR's x2 needs no resize
        for shape, l in raw:
            assert shape in [tuple(f[l].shape[2:]) for f in flows[1:]]
    flows[-1][-1].sum().backward()
    assert all(p.grad is not None for p in r.parameters())


def test_strides_are_validated_and_min_size_follows_them() -> None:
    assert min_input_size([4, 2, 0.5, 0.5], 3) == (29, 29)   # flow 1: X/4 through strides 4, 2 (8 at most)
    assert min_input_size([4, 2, 0.5, 0.5], 1) == (8, 8)     # the largest reduction, not the total (2)
    assert min_input_size([0.5, 0.5, 0.5], 3) == (1, 1)
    assert min_input_size([2, 0.5, 2], 2) == (3, 3)          # flow 1: 2 stages on ceil(X/2) >= 2
    for bad in (0.3, 0, -2, 1.5, True):
        with pytest.raises(ValueError, match="stride"):
            R2DNS(_stages([4, 4], [2, 2]), [4, 4], [2, bad], flows=2)  # type: ignore[list-item]


# --------------------------------------------------------------------------- 3-D (video) inputs


class _TinyVideoNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = R2DNS(_stages([4, 8, 8], [(1, 2, 2), 2, 2], dims=3), [4, 8, 8], [(1, 2, 2), 2, 2],
                              flows=3, anar="anar5", dims=3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x)[-1].mean((2, 3, 4)))


def test_3d_r2dns_forward_backward() -> None:
    torch.manual_seed(0)
    model = _TinyVideoNet()
    assert isinstance(model.backbone.attention[0], ANAR) and model.backbone.attention[0].dims == 3
    with tdaf.record_attention(model) as maps:
        out = model(torch.randn(2, 3, 5, 17, 16))
    assert out.shape == (2, 5) and maps[(1, 3)].shape == (2, 1, 5, 9, 8)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match=r"5-D tensor \(B, C, T, H, W\)"):
        model(torch.randn(2, 3, 16, 16))


def test_3d_torchscript_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _TinyVideoNet().eval()
    assert second_size((4, 16, 16)) == (7, 23, 19)
    report = export_model(model, tmp_path / "video.pt", "torchscript", (3, 4, 16, 16))
    assert report.ok(1e-4) and report.dynamic_hw and [p.size for p in report.parity] == [(4, 16, 16), (7, 23, 19)]
    loaded = torch.jit.load(str(tmp_path / "video.pt"))
    x = torch.randn(1, 3, 6, 20, 18)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


def test_3d_onnx_export(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    report = export_model(_TinyVideoNet().eval(), tmp_path / "video.onnx", "onnx", (3, 4, 16, 16))
    assert report.ok(1e-4) and report.dynamic_hw and len(report.parity) == 2
