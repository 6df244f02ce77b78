"""The fast paths keep the model's results: the cached per-flow statistics of MFBN, ANAR's
native transposed conv for small CPU inputs, the skipped identity resize, and the gated
maps recomputed in the backward pass instead of being stored."""

from __future__ import annotations

import copy
import gc
import pickle
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdaf
from tdaf.layers import MultiFlowBatchNorm
from tdaf.layers.anar import _NATIVE_DECONV_MAX_NUMEL, Deconv2d, Deconv3d, create_anar
from tdaf.profile import count_gmacs
from tdaf.r2dns import R2DNS


def _small_r2dns(flows: int = 3, anar: str | None = "anar3") -> R2DNS:
    torch.manual_seed(0)

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    stages = [block(3, 8, 1), block(8, 16, 2), block(16, 32, 2), block(32, 32, 2)]
    return R2DNS(stages, [8, 16, 32, 32], [1, 2, 2, 2], flows=flows, anar=anar)


# --------------------------------------------------------------------------- MFBN


def test_mfbn_eval_uses_each_flows_statistics_and_follows_buffer_changes() -> None:
    bn = MultiFlowBatchNorm(4, flows=3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.arange(12.0).view(3, 4))
        bn.running_var.copy_(torch.linspace(0.5, 2.0, 12).view(3, 4))
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(2, 4, 5, 5)
    for flow in (0, 2, 1):
        bn.flow = flow
        ref = F.batch_norm(x, bn.running_mean[flow].clone(), bn.running_var[flow].clone(), bn.weight, bn.bias,
                           False, 0.0, bn.eps)
        torch.testing.assert_close(bn(x), ref, rtol=0, atol=0)
    # In-place updates show through the cached rows; new tensors (dtype change, a loaded
    # state with new buffers) replace them.
    with torch.no_grad():
        bn.running_mean.add_(1.0)
    bn.flow = 1
    ref = F.batch_norm(x, bn.running_mean[1].clone(), bn.running_var[1].clone(), bn.weight, bn.bias, False, 0.0,
                       bn.eps)
    torch.testing.assert_close(bn(x), ref, rtol=0, atol=0)
    bn.double()
    assert bn(x.double()).dtype == torch.float64
    bn.running_mean = torch.zeros(3, 4, dtype=torch.float64)
    out = bn(x.double())
    ref = F.batch_norm(x.double(), torch.zeros(4, dtype=torch.float64), bn.running_var[1].clone(), bn.weight,
                       bn.bias, False, 0.0, bn.eps)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_mfbn_copies_and_pickles_without_its_cached_rows() -> None:
    bn = MultiFlowBatchNorm(4, flows=2).eval()
    bn(torch.randn(1, 4, 3, 3))
    assert "_rows" in bn.__dict__
    for clone in (copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))):
        assert "_rows" not in clone.__dict__
        with torch.no_grad():
            clone.running_mean.fill_(5.0)
        x = torch.randn(1, 4, 3, 3)
        assert not torch.allclose(clone(x), bn(x))  # the copy normalises with its own buffers


# --------------------------------------------------------------------------- ANAR's transposed conv


@pytest.mark.parametrize("cls,dims", [(Deconv2d, 2), (Deconv3d, 3)])
@pytest.mark.parametrize("size", [3, 8])
def test_native_deconv_matches_the_transposed_conv(cls: type, dims: int, size: int) -> None:
    torch.manual_seed(0)
    layer = cls(6, 3, 4, stride=2, padding=1, bias=False)
    reference = (nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d)(6, 3, 4, stride=2, padding=1, bias=False)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, *([size] * dims))
    assert x.numel() <= _NATIVE_DECONV_MAX_NUMEL  # in inference the native kernel runs
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)
    # training keeps the standard kernel: bit-identical outputs and gradients
    x.requires_grad_(True)
    out, ref = layer(x), reference(x)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, layer.weight), g), torch.autograd.grad(ref, (x, reference.weight), g)):
        assert torch.equal(a, b)


def test_gmacs_do_not_depend_on_which_deconv_kernel_runs() -> None:
    anar = create_anar("anar3", 64).eval()
    small = torch.randn(1, 64, 4, 4)  # the transposed conv sees (1, 8, 4, 4): the native kernel
    # trans 1x1 (64->8), up 4x4 stride 2 (8->2, per input pixel), head 1x1 (2->1, at 8x8)
    expected = (64 * 8 * 16 + 8 * 2 * 16 * 16 + 2 * 1 * 64) / 1e9
    assert count_gmacs(anar, small) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- R2DNS


def test_odd_and_even_sizes_give_the_same_maps_as_an_explicit_resize() -> None:
    model = _small_r2dns().eval()
    for size in (32, 33):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad(), model.record_attention() as maps:
            model(x)
        outs = model.forward_flows(x)
        for (stage, flow), a in maps.items():
            assert a.shape[2:] == outs[flow - 1][stage - 1].shape[2:]


def _grads(model: nn.Module, x: torch.Tensor, outer_hooks: bool) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    if outer_hooks:  # someone else's saved-tensor hooks switch the recomputation off
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            loss = sum(o.square().mean() for o in model(x))
    else:
        loss = sum(o.square().mean() for o in model(x))
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_recomputed_gated_maps_give_bit_identical_gradients() -> None:
    model = _small_r2dns().train()
    x = torch.randn(2, 3, 32, 32)
    state = copy.deepcopy(model.state_dict())
    fast = _grads(model, x, outer_hooks=False)
    model.load_state_dict(state)
    slow = _grads(model, x, outer_hooks=True)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_gated_maps_are_not_kept_for_the_backward_pass() -> None:
    model = _small_r2dns().train()
    x = torch.randn(2, 3, 32, 32)

    def gated_map_alive(outer_hooks: bool) -> bool:
        def run() -> tuple[torch.Tensor, weakref.ref]:
            flows = model.forward_flows(x)
            return flows[-1][-1].sum() + flows[-2][-1].sum(), weakref.ref(flows[-1][0])  # flow 3, stage 1: gated

        if outer_hooks:
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                loss, ref = run()
        else:
            loss, ref = run()
        gc.collect()
        alive = ref() is not None
        loss.backward()
        return alive

    assert gated_map_alive(outer_hooks=True)  # stored by the next stage's conv
    assert not gated_map_alive(outer_hooks=False)  # stored as (stage output, gate), recomputed


def test_recomputation_is_off_without_gradients_and_without_attention() -> None:
    from tdaf.r2dns import _RecomputeGated

    with torch.no_grad():
        assert not _RecomputeGated.applicable()
    assert _RecomputeGated.applicable()
    model = _small_r2dns(anar=None).train()
    model(torch.randn(1, 3, 32, 32))  # no attention: nothing to recompute, nothing breaks


# --------------------------------------------------------------------------- the benchmark


def test_overhead_benchmark_floor_runs_the_extra_flows_stages() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import overhead
    finally:
        sys.path.pop(0)
    case = overhead.Case("tiny", "resnet18_cifar", 2, 32, "eval", 2, num_classes=10)
    models = overhead.build_trio(case)
    x = torch.randn(1, 3, 32, 32)
    macs = {k: count_gmacs(m, x) for k, m in models.items()}
    anar = sum(count_gmacs(a, o) for a, o in _anar_inputs(models["tdaf"], x))
    # floor = TDAF without its attention path: plain + the extra flows' stages
    assert macs["floor"] == pytest.approx(macs["tdaf"] - anar, rel=1e-6)
    assert macs["floor"] > 1.2 * macs["plain"]
    # in training the extra flows reach the loss (their backward pass runs)
    models["floor"].train()
    models["floor"](torch.randn(2, 3, 32, 32)).sum().backward()
    assert models["plain"].backbone.stages[0][0].weight.grad is not None
    result = overhead.run_case(case, "eager", torch.device("cpu"), rounds=2, progress=False)
    assert set(result["rows"]) == {"plain", "floor", "tdaf", "tdaf folded", "attention share"}
    assert result["rows"]["plain"]["median"] == 1.0


def _anar_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [a.register_forward_pre_hook(lambda m, args: seen.append((m, args[0]))) for a in model.backbone.attention]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


# --------------------------------------------------------------------------- overlapped flows


def test_overlap_is_a_no_op_off_cuda_and_copies_without_streams() -> None:
    model = _small_r2dns().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model.overlap = True
        out = model(x)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    model.__dict__["_side_streams"] = {"cuda:0": object()}  # what an overlapped forward leaves
    clone = copy.deepcopy(model)
    assert "_side_streams" not in clone.__dict__ and clone.overlap


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("flows", [2, 3])
def test_overlapped_flows_match_the_sequential_ones_on_cuda(flows: int) -> None:
    model = _small_r2dns(flows=flows).cuda().train()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    state = copy.deepcopy(model.state_dict())
    ref = [t.detach() for t in model.forward_flows(x)[-1]]
    sum(t.square().mean() for t in model.forward_flows(x)[-1]).backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    ref_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    model.overlap = True
    out = [t.detach() for t in model.forward_flows(x)[-1]]
    sum(t.square().mean() for t in model.forward_flows(x)[-1]).backward()
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip((p.grad for p in model.parameters()), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for (k, a), b in zip(model.state_dict().items(), ref_state.values()):  # per-flow statistics alike
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_overlap_flows_sets_every_r2dns_and_is_a_train_option() -> None:
    from tdaf.engine.config import TrainConfig

    detector_like = nn.ModuleList([_small_r2dns(), nn.Sequential(_small_r2dns(flows=2))])
    assert tdaf.overlap_flows(detector_like) == 2
    assert all(m.overlap for m in detector_like.modules() if isinstance(m, R2DNS))
    assert tdaf.overlap_flows(detector_like, enabled=False) == 2
    assert not any(m.overlap for m in detector_like.modules() if isinstance(m, R2DNS))
    assert tdaf.overlap_flows(nn.Linear(2, 2)) == 0
    assert TrainConfig().overlap_flows is False


def test_interleaved_times_rotate_the_order_every_round() -> None:
    from tdaf.profile import interleaved_times

    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    rounds: list[int] = []
    times = interleaved_times(fns, rounds=3, warmup=1, on_round=rounds.append)
    assert calls == list("abc" "abc" "bca" "cab")  # the warm-up round, then the rotated ones
    assert rounds == [1, 2, 3] and all(len(t) == 3 and min(t) >= 0 for t in times.values())
