"""Recording the ANAR attention maps of a TDAF model without changing its forward."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .r2dns import R2DNS, AttentionMaps

__all__ = ["record_attention", "find_r2dns"]


def find_r2dns(model: nn.Module) -> R2DNS:
    """The one R2DNS module inside ``model`` (ValueError if there is none or several)."""
    found = [m for m in model.modules() if isinstance(m, R2DNS)]
    if not found:
        raise ValueError(f"record_attention: {type(model).__name__} contains no R2DNS module (not a TDAF model)")
    if len(found) > 1:
        raise ValueError(
            f"record_attention: {type(model).__name__} contains {len(found)} R2DNS modules; pass the one to record"
        )
    return found[0]


@contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionMaps]:
    """Collect every ANAR output of ``model`` while the block runs (see
    :meth:`R2DNS.record_attention`).

    Yields a dict filled by each forward pass: ``maps[(stage, flow)]`` is the sigmoid map
    g_stage(x^(flow-1)) applied in ``flow`` (both 1-based, as in the paper), resized to
    its target, shape ``(B, 1, H, W)`` or ``(B, 1, T, H, W)``, detached. A later forward
    overwrites the maps of an earlier one.

        with tdaf.record_attention(model) as maps:
            model(x)
    """
    r2dns = find_r2dns(model)
    if r2dns.anar_name is None:
        raise ValueError(
            f"record_attention: {type(model).__name__} runs its flows without attention (anar=None)"
        )
    with r2dns.record_attention() as maps:
        yield maps
