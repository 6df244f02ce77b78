"""Parameters, multiply-accumulates and CPU latency of a model, as the paper reports them."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_gmacs", "measure_latency", "interleaved_latency", "profile_model"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, example: torch.Tensor) -> float:
    """GMACs of one forward pass of ``example`` (batch included), from
    ``torch.utils.flop_counter``: MACs = FLOPs / 2, the convention of the paper's
    "GFlops" columns (ResNet-50 at 224: 4.1)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def interleaved_latency(models: Sequence[nn.Module], example: torch.Tensor, rounds: int = 5,
                        warmup: int = 2) -> list[float]:
    """Median eval-mode forward time (ms) of ``example`` for each model. The models are timed
    in turn within each round, so a change in the machine's load hits all of them alike."""
    modes = [m.training for m in models]
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for m in models:
                m.eval()
                for _ in range(warmup):
                    m(example)
            for _ in range(rounds):
                for m, t in zip(models, times):
                    start = time.perf_counter()
                    m(example)
                    if example.is_cuda:
                        torch.cuda.synchronize()
                    t.append((time.perf_counter() - start) * 1e3)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return [statistics.median(t) for t in times]


def measure_latency(model: nn.Module, example: torch.Tensor, warmup: int = 2, iters: int = 5) -> float:
    """Median eval-mode forward time in milliseconds."""
    return interleaved_latency([model], example, rounds=iters, warmup=warmup)[0]


def profile_model(
    model: nn.Module,
    input_size: tuple[int, ...],
    batch_size: int = 1,
    latency: bool = True,
    warmup: int = 2,
    iters: int = 5,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """``params``, ``gmacs`` (per image) and ``latency_ms`` (per batch, on ``device``) of ``model``."""
    example = torch.randn(batch_size, *input_size)
    out: dict[str, Any] = {
        "params": count_params(model),
        "gmacs": count_gmacs(model, example[:1]),
        "input_size": list(input_size),
        "batch_size": batch_size,
    }
    if latency:
        device = torch.device(device)
        out["latency_ms"] = measure_latency(model.to(device), example.to(device), warmup=warmup, iters=iters)
        out["device"] = device.type
        out["threads"] = torch.get_num_threads()
    return out
