"""Whether a forward runs eagerly on real tensors, or is being traced, scripted, compiled
or exported (shapes symbolic, values unknown): the fast paths and the input checks of
the layers and of R2DNS run in eager mode only."""

from __future__ import annotations

import torch

__all__ = ["is_eager"]


# torch.fx.symbolic_trace (compiling and exporting are asked separately); newer torch logs a
# warning on every call of is_fx_tracing, so the specific function comes first. Looked up
# once: is_eager runs in every normalisation layer's forward.
_fx_symbolic_tracing = (getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
                        or getattr(torch.fx._symbolic_trace, "is_fx_tracing"))


def is_eager() -> bool:
    """False while tracing (``torch.jit.trace``, ``torch.fx.symbolic_trace``), scripting,
    compiling or exporting."""
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                or _fx_symbolic_tracing())
