"""Initialising a plain torchvision/timm network from a local state-dict file.

A file in another layout (tdaf's own names, a tdaf checkpoint) is refused here with
:class:`PretrainedLayoutError`; :func:`tdaf.create_model` then loads it through
:func:`tdaf.init_from`, as ``tdaf train --init-from`` does."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from torch import nn

from ..errors import UserError
from ..io.files import load_state_dict_file

__all__ = ["load_pretrained", "PretrainedLayoutError"]

log = logging.getLogger(__name__)


class PretrainedLayoutError(UserError):
    """A ``pretrained`` file whose keys are not the plain torchvision/timm network's (a
    ``ValueError``, as before): :func:`tdaf.create_model` tries tdaf's own layout next."""


def _first(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_pretrained(
    net: nn.Module, path: str | os.PathLike[str], model_name: str, classifier: Sequence[str] = ("fc",)
) -> None:
    """Load ``path`` (torchvision or timm key layout) into the plain network ``net``.

    The classifier (``classifier`` prefixes) is skipped when its shape differs, as when
    fine-tuning to another number of classes. Any other missing, unexpected or
    mis-shaped key is an error that names the model and the first mismatched keys.
    """
    state = load_state_dict_file(path, "pretrained")
    own = net.state_dict()
    skipped = [
        k for k in state
        if any(k.startswith(c + ".") for c in classifier) and k in own and state[k].shape != own[k].shape
    ]
    for k in skipped:
        del state[k]
    # Old torchvision files carry no BatchNorm batch counters; they are not weights.
    missing = [k for k in own if k not in state and k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_first(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (file vs model): {_first(mismatched)}")
        raise PretrainedLayoutError(
            f"pretrained: {path} does not fit {model_name} (expected a state dict of the plain "
            f"{model_name.removeprefix('tdaf_')} in torchvision or timm layout); " + "; ".join(parts)
        )
    net.load_state_dict(state, strict=False)
    if skipped:
        log.warning("pretrained: %s: classifier %s not loaded (different number of classes)", path, _first(skipped))
