"""Core properties of R2DNS, MFBN and ANAR (paper §3, Eqs. 1-5, Table 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdaf
from tdaf.layers import ANAR, MultiFlowBatchNorm, convert_to_mfbn, create_anar
from tdaf.layers.downsample import Downsample
from tdaf.r2dns import R2DNS, min_input_size



# --------------------------------------------------------------------------- ANAR

def _conv_params(cin: int, cout: int, k: int, dims: int = 2, groups: int = 1, bias: bool = False) -> int:
    return cout * (cin // groups) * k**dims + (cout if bias else 0)


def _resample_params(cin: int, cout: int, k: int, dims: int, depthwise: bool) -> int:
    if not depthwise:
        return _conv_params(cin, cout, k, dims) + 2 * cout
    return _conv_params(cin, cin, k, dims, groups=cin) + 2 * cin + _conv_params(cin, cout, 1, dims) + 2 * cout


def anar_formula(c: int, variant: str, dims: int = 2, depthwise: bool = False) -> int:
    """Parameter count of Table 1, written out layer by layer (BN: 2 affine params/channel)."""
    w = lambda d: max(1, c // d)  # noqa: E731
    if variant == "anar2":
        return _conv_params(c, w(8), 1, dims) + 2 * w(8) + _conv_params(w(8), 1, 1, dims, bias=True)
    if variant == "anar3":
        return (_conv_params(c, w(8), 1, dims) + 2 * w(8) + _resample_params(w(8), w(32), 4, dims, depthwise)
                + _conv_params(w(32), 1, 1, dims, bias=True))
    if variant == "anar5":
        t, d1, u1, u2 = w(4), w(8), w(16), w(32)
        return (_conv_params(c, t, 1, dims) + 2 * t
                + _resample_params(t, d1, 3, dims, depthwise)
                + _resample_params(d1, u1, 4, dims, depthwise) + _conv_params(t, u1, 1, dims) + 2 * u1  # up1 + SC
                + _resample_params(u1, u2, 4, dims, depthwise)
                + _conv_params(u2, 1, 1, dims, bias=True))
    if variant == "anar7":
        t, d, u1, u3 = w(4), w(8), w(16), w(32)
        return (_conv_params(c, t, 1, dims) + 2 * t
                + _resample_params(t, d, 3, dims, depthwise) + _resample_params(d, d, 3, dims, depthwise)
                + _resample_params(d, u1, 4, dims, depthwise) + _conv_params(d, u1, 1, dims) + 2 * u1   # up1 + SC(d1)
                + _resample_params(u1, u1, 4, dims, depthwise) + _conv_params(t, u1, 1, dims) + 2 * u1  # up2 + SC(t)
                + _resample_params(u1, u3, 4, dims, depthwise)
                + _conv_params(u3, 1, 1, dims, bias=True))
    raise AssertionError(variant)


@pytest.mark.parametrize("variant", ["anar2", "anar3", "anar5", "anar7"])
@pytest.mark.parametrize("dims,depthwise", [(2, False), (2, True), (3, False)])
@pytest.mark.parametrize("channels", [64, 256])
def test_anar_parameter_count_matches_table1(variant: str, dims: int, depthwise: bool, channels: int) -> None:
    anar = create_anar(variant, channels, dims=dims, depthwise=depthwise)
    assert sum(p.numel() for p in anar.parameters()) == anar_formula(channels, variant, dims, depthwise)


@pytest.mark.parametrize("variant", ["anar2", "anar3", "anar5", "anar7"])
@pytest.mark.parametrize("dims", [2, 3])
def test_anar_output_is_a_mask_at_twice_the_size(variant: str, dims: int) -> None:
    anar = create_anar(variant, 32, dims=dims)
    size = (8,) * dims
    y = anar(torch.randn(2, 32, *size) * 5)
    assert y.shape == (2, 1, *(16,) * dims)
    assert torch.all(y > 0) and torch.all(y < 1)


def test_anar_widths_follow_table1() -> None:
    a7 = create_anar("anar7", 256)
    assert a7.trans[0].out_channels == 64                          # c/4
    assert [d[0][0].out_channels for d in a7.downs] == [32, 32]   # c/8, c/8, stride 2
    assert all(d[0][0].stride == (2, 2) for d in a7.downs)
    assert [u[0].out_channels for u in a7.ups] == [16, 16, 8]     # c/16, c/16, c/32
    assert all(u[0].kernel_size == (4, 4) and u[0].stride == (2, 2) for u in a7.ups)
    assert len(a7.skips) == 2 and len(create_anar("anar5", 256).skips) == 1
    assert len(create_anar("anar3", 256).skips) == 0
    a2 = create_anar("anar2", 256)
    assert len(a2.ups) == 0 and a2.head.in_channels == 32           # c/8 -> interpolate -> 1


def test_anar_handles_odd_sizes() -> None:
    for variant in ("anar5", "anar7"):
        y = create_anar(variant, 16)(torch.randn(1, 16, 7, 5))
        assert y.shape[:2] == (1, 1) and y.shape[2] >= 13 and y.shape[3] >= 9


def test_anar_names_are_validated() -> None:
    with pytest.raises(ValueError, match="anar.*'anar4'.*anar2, anar3, anar5, anar7"):
        create_anar("anar4", 16)
    assert isinstance(create_anar("ANAR-5", 16), ANAR)


# --------------------------------------------------------------------------- MFBN

@pytest.mark.parametrize("momentum", [0.1, None])
def test_mfbn_with_one_flow_is_batchnorm(momentum: float | None) -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6, momentum=momentum)
    nn.init.uniform_(bn.weight)
    nn.init.uniform_(bn.bias)
    mf = convert_to_mfbn(nn.Sequential(bn), flows=1)[0]
    bn_ref = nn.BatchNorm2d(6, momentum=momentum)
    bn_ref.load_state_dict(bn.state_dict())
    for _ in range(3):
        x = torch.randn(4, 6, 5, 5) * 3 + 1
        torch.testing.assert_close(mf(x), bn_ref(x))
    torch.testing.assert_close(mf.running_mean[0], bn_ref.running_mean)
    torch.testing.assert_close(mf.running_var[0], bn_ref.running_var)
    mf.eval(), bn_ref.eval()
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(mf(x), bn_ref(x))


def test_mfbn_keeps_statistics_per_flow_and_shares_affine() -> None:
    mf = MultiFlowBatchNorm(3, flows=2)
    mf.flow = 0
    mf(torch.randn(8, 3, 4, 4))
    mf.flow = 1
    mf(torch.randn(8, 3, 4, 4) * 4 + 10)
    assert mf.num_batches_tracked.tolist() == [1, 1]
    assert mf.running_mean[1].mean() > mf.running_mean[0].mean() + 0.5
    assert [n for n, _ in mf.named_parameters()] == ["weight", "bias"]
    assert mf.weight.shape == (3,)


def test_mfbn_loads_plain_batchnorm_state_into_every_flow() -> None:
    bn = nn.BatchNorm1d(4)
    bn.running_mean.copy_(torch.arange(4.0))
    bn.running_var.fill_(2.0)
    bn.num_batches_tracked.fill_(7)
    mf = MultiFlowBatchNorm(4, flows=3, dims=1)
    mf.load_state_dict(bn.state_dict())
    assert torch.equal(mf.running_mean, torch.arange(4.0).expand(3, 4))
    assert torch.equal(mf.running_var, torch.full((3, 4), 2.0))
    assert mf.num_batches_tracked.tolist() == [7, 7, 7]


def test_mfbn_3d_and_1d() -> None:
    assert MultiFlowBatchNorm(2, 2, dims=3)(torch.randn(2, 2, 3, 4, 4)).shape == (2, 2, 3, 4, 4)
    assert MultiFlowBatchNorm(2, 2, dims=1)(torch.randn(4, 2)).shape == (4, 2)
    with pytest.raises(ValueError, match="expects a 4-D input, got 3-D"):
        MultiFlowBatchNorm(2, 2)(torch.randn(2, 2, 3))


# --------------------------------------------------------------------------- R2DNS


def _toy_stages(channels: list[int], strides: list[int], dims: int = 2) -> list[nn.Module]:
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    stages, cin = [], 3
    for c, s in zip(channels, strides):
        stages.append(nn.Sequential(conv(cin, c, 3, stride=s, padding=1, bias=False), bn(c), nn.ReLU()))
        cin = c
    return stages


def _reference_forward(r: R2DNS, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 1, 2 and 5 written out directly, flow by flow."""
    N, L = r.flows, len(r.stages)
    inputs = {N: x}
    for n in range(N - 1, 0, -1):
        inputs[n] = F.avg_pool2d(inputs[n + 1], 2, 2, ceil_mode=True)
    feats: dict[tuple[int, int], torch.Tensor] = {}
    for n in range(1, N + 1):
        for m in r.modules():
            if isinstance(m, MultiFlowBatchNorm):
                m.flow = n - 1
        h = inputs[n]
        for l in range(1, L - (N - n) + 1):
            h = r.stages[l - 1](h)
            if (l, n - 1) in feats:
                g = r.attention[l - 1](feats[(l, n - 1)])
                g = F.interpolate(g, size=h.shape[2:], mode="bilinear", align_corners=False)
                h = h * (g + r.eta)
            feats[(l, n)] = h
    return feats[(L, N)]


def test_r2dns_matches_equations_1_2_5() -> None:
    torch.manual_seed(0)
    r = R2DNS(_toy_stages([8, 16, 16, 32], [2, 2, 2, 2]), [8, 16, 16, 32], [2, 2, 2, 2], flows=3, anar="anar5")
    r.eval()
    x = torch.randn(2, 3, 37, 45)
    torch.testing.assert_close(r(x)[-1], _reference_forward(r, x))


def test_r2dns_flow_lengths_and_attention_count() -> None:
    r = R2DNS(_toy_stages([8, 8, 8, 8], [2, 2, 2, 2]), [8] * 4, [2] * 4, flows=3)
    assert [r.stages_in_flow(n) for n in (1, 2, 3)] == [2, 3, 4]
    assert len(r.attention) == 3  # g_4 never built
    with tdaf.record_attention(r) as maps:
        out = r(torch.randn(1, 3, 64, 64))
    assert sorted(maps) == [(1, 2), (1, 3), (2, 2), (2, 3), (3, 3)]  # 5 applications
    assert maps[(1, 3)].shape == (1, 1, 32, 32) and maps[(1, 2)].shape == (1, 1, 16, 16)
    assert all(((m > 0) & (m < 1)).all() for m in maps.values())
    assert [o.shape[-1] for o in out] == [32, 16, 8, 4]


def test_flows_one_is_the_plain_stack() -> None:
    torch.manual_seed(0)
    stages = _toy_stages([8, 8, 8], [2, 2, 2])
    plain = nn.Sequential(*[nn.Sequential(*[m for m in s]) for s in stages])
    plain.load_state_dict(nn.Sequential(*stages).state_dict())
    r = R2DNS(stages, [8, 8, 8], [2, 2, 2], flows=1).eval()
    plain.eval()
    x = torch.randn(2, 3, 16, 16)
    assert len(r.attention) == 0
    torch.testing.assert_close(r(x)[-1], plain(x))


def test_eta_scales_the_gate() -> None:
    torch.manual_seed(0)
    r = R2DNS(_toy_stages([4, 4], [2, 2]), [4, 4], [2, 2], flows=2, eta=0.0).eval()
    x = torch.randn(1, 3, 16, 16)
    with tdaf.record_attention(r) as maps:
        gated = r(x)[0]
    for m in r.modules():
        if isinstance(m, MultiFlowBatchNorm):
            m.flow = 1
    ungated = r.stages[0](x)
    torch.testing.assert_close(gated, ungated * maps[(1, 2)])


def test_min_input_size() -> None:
    assert min_input_size([4, 2, 2, 2], 3) == (32, 32)   # ResNet-50, 3 flows
    assert min_input_size([1, 2, 2, 2], 3) == (8, 8)     # CIFAR stem
    assert min_input_size([4, 2, 2, 2], 1) == (32, 32)
    assert min_input_size([4, 2, 2, 2], 4) == (32, 32)   # first flow: 1 stride-4 stage on X/8
    assert min_input_size([(1, 4, 4), 2, 2], 2, dims=3) == (4, 16, 16)


def test_r2dns_bilinear_downsample_and_3d() -> None:
    r = R2DNS(_toy_stages([4, 8, 8], [2, 2, 2]), [4, 8, 8], [2, 2, 2], flows=3, downsample="bilinear")
    assert r(torch.randn(2, 3, 35, 41))[-1].shape == (2, 8, 5, 6)
    r3 = R2DNS(_toy_stages([4, 8, 8], [2, 2, 2], dims=3), [4, 8, 8], [2, 2, 2], flows=3, anar="anar5", dims=3)
    with tdaf.record_attention(r3) as maps:
        out = r3(torch.randn(2, 3, 8, 17, 16))
    assert out[-1].shape == (2, 8, 1, 3, 2)
    assert maps[(1, 3)].shape == (2, 1, 4, 9, 8)
    assert Downsample("avg", 3)(torch.ones(1, 1, 3, 5, 5)).shape == (1, 1, 2, 3, 3)


def test_r2dns_argument_errors() -> None:
    stages = _toy_stages([4, 4], [2, 2])
    with pytest.raises(ValueError, match=r"flows: got 3; allowed: an integer from 1 to the number of stages \(2\)"):
        R2DNS(stages, [4, 4], [2, 2], flows=3)
    with pytest.raises(ValueError, match="downsample: unknown mode 'max'; allowed: avg, bilinear"):
        R2DNS(stages, [4, 4], [2, 2], flows=2, downsample="max")
    with pytest.raises(ValueError, match="eta"):
        R2DNS(stages, [4, 4], [2, 2], flows=2, eta=2.0)
    with pytest.raises(ValueError, match="2 stages but 1 channel counts"):
        R2DNS(stages, [4], [2, 2], flows=2)
    r = R2DNS(_toy_stages([4, 4], [2, 2]), [4, 5], [2, 2], flows=2)
    with pytest.raises(ValueError, match="stage 2: declared 5 output channels, but the stage produced 4"):
        r(torch.randn(1, 3, 16, 16))
