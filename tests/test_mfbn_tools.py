"""MFBN with the ecosystem's BatchNorm tools: norm_eval loops, torch's and timm's
converters, and tdaf's per-flow SyncBatchNorm (a 2-process gloo group on CPU)."""

from __future__ import annotations

import copy
import io
import os
import socket

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import tdaf
from tdaf.layers import (
    FrozenMultiFlowBatchNorm, MultiFlowBatchNorm, SyncMultiFlowBatchNorm, convert_sync_batchnorm, freeze_mfbn,
)


def _model(flows: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return tdaf.create_model("tdaf_resnet18_cifar", flows=flows, anar="anar2")


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_mfbn_is_a_batchnorm_of_its_rank_with_the_same_state_dict() -> None:
    mf = MultiFlowBatchNorm(4, flows=3)
    assert isinstance(mf, _BatchNorm) and isinstance(mf, nn.BatchNorm2d) and isinstance(mf, MultiFlowBatchNorm)
    assert isinstance(MultiFlowBatchNorm(4, 3, dims=1), nn.BatchNorm1d)
    assert isinstance(MultiFlowBatchNorm(4, 3, dims=3), nn.BatchNorm3d)
    assert {k: tuple(v.shape) for k, v in mf.state_dict().items()} == {
        "weight": (4,), "bias": (4,), "running_mean": (3, 4), "running_var": (3, 4), "num_batches_tracked": (3,)}
    # Pickling (torch.save of a whole model, deepcopy) keeps the class.
    buf = io.BytesIO()
    torch.save(mf, buf)
    buf.seek(0)
    assert type(torch.load(buf, weights_only=False)) is type(mf) is type(copy.deepcopy(mf))


def test_norm_eval_loop_over_batchnorm_freezes_every_flows_statistics() -> None:
    model = _model().train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]  # mmdetection's norm_eval
    assert len(norms) == len([m for m in model.modules() if isinstance(m, MultiFlowBatchNorm)]) > 0
    for m in norms:
        m.eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model(_x())
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


@pytest.mark.parametrize("flows", [1, 2])
@pytest.mark.parametrize("convert", [nn.SyncBatchNorm.convert_sync_batchnorm, timm.layers.convert_sync_batchnorm,
                                     timm.layers.freeze_batch_norm_2d])
def test_single_statistics_converters_fail_loudly(convert, flows: int) -> None:
    model = _model(flows=flows).eval()
    ref = model(_x())
    converted = convert(model)
    assert not any(isinstance(m, MultiFlowBatchNorm) for m in converted.modules())  # they did see MFBN
    if convert is timm.layers.freeze_batch_norm_2d and flows == 1:  # one flow, one set: exact
        torch.testing.assert_close(converted.train()(_x()), ref)
        return
    for mode in (converted.train, converted.eval):
        mode()
        with pytest.raises(RuntimeError):  # (flows, C) statistics do not fit C channels
            converted(_x())


def test_timm_freeze_fails_loudly_with_several_flows() -> None:
    model = _model(flows=2)
    timm.utils.freeze(model)  # parameters and, through freeze_batch_norm_2d, BatchNorm layers
    with pytest.raises(RuntimeError):
        model(_x())


def test_tdaf_convert_sync_batchnorm_keeps_per_flow_statistics_and_state_dict() -> None:
    model = _model().eval()
    anar_bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    x = _x()
    ref = model(x)
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    synced = convert_sync_batchnorm(model)
    assert synced is model
    mfbn = [m for m in model.modules() if isinstance(m, MultiFlowBatchNorm)]
    assert mfbn and all(isinstance(m, SyncMultiFlowBatchNorm) and isinstance(m, nn.BatchNorm2d) for m in mfbn)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    torch.testing.assert_close(model(x), ref)  # eval, no process group: plain MFBN
    assert isinstance(convert_sync_batchnorm(anar_bn)[1], nn.SyncBatchNorm)
    # Frozen layers stay frozen; freezing a synchronised model still works.
    assert all(isinstance(m, FrozenMultiFlowBatchNorm) for m in freeze_mfbn(model).modules()
               if isinstance(m, (FrozenMultiFlowBatchNorm, MultiFlowBatchNorm)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, port: int, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        sync = convert_sync_batchnorm(MultiFlowBatchNorm(3, flows=2))
        full = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 3 + 1
        with torch.no_grad():
            sync.weight.uniform_(0.5, 1.5)
        for flow, scale in ((0, 1.0), (1, 2.0)):
            sync.flow = flow
            part = (full * scale)[4 * rank:4 * rank + 4].requires_grad_()
            y = sync(part)
            (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
            result[(rank, flow)] = (y.detach(), part.grad)
        result[(rank, "state")] = {k: v.clone() for k, v in sync.state_dict().items()}
        result[(rank, "weight_grad")] = sync.weight.grad.clone()
    finally:
        dist.destroy_process_group()


def test_sync_mfbn_matches_one_process_mfbn_per_flow_across_two_processes() -> None:
    port = _free_port()
    with mp.Manager() as manager:
        result = manager.dict()
        # fork: the workers need no second import of torch, timm and tdaf.
        mp.start_processes(_sync_worker, args=(port, result), nprocs=2, join=True, start_method="fork")
        result = dict(result)
    torch.manual_seed(0)
    ref = MultiFlowBatchNorm(3, flows=2)
    full = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 3 + 1
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    for flow, scale in ((0, 1.0), (1, 2.0)):
        ref.flow = flow
        inp = (full * scale).requires_grad_()
        y = ref(inp)
        weights = torch.cat([torch.arange(y[:4].numel()).reshape(y[:4].shape)] * 2)
        (y * weights).sum().backward()
        for rank in (0, 1):
            y_r, g_r = result[(rank, flow)]
            torch.testing.assert_close(y_r, y.detach()[4 * rank:4 * rank + 4], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(g_r, inp.grad[4 * rank:4 * rank + 4], rtol=1e-3, atol=1e-3)
    for rank in (0, 1):  # per-flow running statistics of the whole batch, on every process
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(result[(rank, "state")][k], v, rtol=1e-4, atol=1e-5)
    # Each process holds the gradient of its own half of the loss; DDP would average them.
    torch.testing.assert_close(result[(0, "weight_grad")] + result[(1, "weight_grad")], ref.weight.grad,
                               rtol=1e-4, atol=1e-3)
