"""Parameters, multiply-accumulates and CPU latency of a model, as the paper reports them."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "count_params", "count_gmacs", "measure_latency", "interleaved_latency", "interleaved_times", "profile_model",
]


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


def interleaved_times(fns: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 2,
                      device: torch.device | str = "cpu",
                      on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Seconds of every call of each function, per round. Within a round each function runs
    once, and the order rotates from round to round, so that a change in the machine's load
    hits all of them alike and none always follows the same one. Wall time on a CPU, CUDA
    events on a GPU. ``on_round(r)`` is called after round ``r`` (1-based)."""
    device = torch.device(device)
    keys = list(fns)
    for _ in range(warmup):
        for k in keys:
            fns[k]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            times[k].append(_timed(fns[k], device))
        if on_round is not None:
            on_round(r + 1)
    return times


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def interleaved_latency(models: Sequence[nn.Module], example: torch.Tensor, rounds: int = 5,
                        warmup: int = 2) -> list[float]:
    """Median eval-mode forward time (ms) of ``example`` for each model, the models timed in
    turn within each round (:func:`interleaved_times`)."""
    modes = [m.training for m in models]
    try:
        with torch.inference_mode():
            for m in models:
                m.eval()
            times = interleaved_times({i: functools.partial(m, example) for i, m in enumerate(models)}, rounds,
                                      warmup, example.device)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return [statistics.median(times[i]) * 1e3 for i in range(len(models))]


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
