"""Recording the ANAR attention maps of a TDAF model without changing its forward."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .r2dns import R2DNS

__all__ = ["record_attention"]


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[tuple[int, int], torch.Tensor]]:
    """Collect every ANAR output of ``model`` while the block runs.

    Yields a dict filled by each forward pass: ``maps[(stage, flow)]`` is the sigmoid map
    g_stage(x^(flow-1)) applied in ``flow`` (both 1-based, as in the paper), resized to
    its target, shape ``(B, 1, H, W)`` or ``(B, 1, T, H, W)``, detached. A later forward
    overwrites the maps of an earlier one.

        with tdaf.record_attention(model) as maps:
            model(x)
    """
    found = [m for m in model.modules() if isinstance(m, R2DNS)]
    if not found:
        raise ValueError(f"record_attention: {type(model).__name__} contains no R2DNS module (not a TDAF model)")
    if len(found) > 1:
        raise ValueError(
            f"record_attention: {type(model).__name__} contains {len(found)} R2DNS modules; pass the one to record"
        )
    r2dns = found[0]
    if r2dns._recorder is not None:
        raise RuntimeError("record_attention: this model is already being recorded")
    maps: dict[tuple[int, int], torch.Tensor] = {}
    r2dns._recorder = maps
    try:
        yield maps
    finally:
        r2dns._recorder = None
