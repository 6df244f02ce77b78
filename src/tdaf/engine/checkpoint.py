"""Safe loading and atomic saving of weights and checkpoints.

Opening a file never runs code from it: everything loads with
``torch.load(..., weights_only=True)`` (or safetensors), and a pickle that asks for more
is refused with a clear error. Saving writes a temporary file in the same folder, syncs
it and renames it over the target, so an interrupted save never destroys the last good
file.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..io.files import atomic_save, load_state_dict_file, safe_load

__all__ = [
    "safe_load", "atomic_save", "load_state_dict_file", "checkpoint_payload", "load_checkpoint",
    "model_from_checkpoint", "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "tdaf-checkpoint/1"


def checkpoint_payload(model_name: str, model_kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor],
                       meta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The on-disk checkpoint layout (plain containers and tensors only, so it loads
    with ``weights_only=True``):

    ``format``; ``model``: ``{"name", "kwargs"}`` for :func:`tdaf.create_model`;
    ``state_dict``; ``meta``: ``class_names``, ``mean``, ``std``, ``input_size``,
    ``epoch``, ``metrics``, ... ; plus any training state in ``extra`` (optimizer,
    scheduler, RNG states as tensors, ...).
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "state_dict": state_dict,
        "meta": dict(meta or {}),
        **extra,
    }


def load_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> dict[str, Any]:
    """Read and validate a tdaf checkpoint written with :func:`checkpoint_payload`."""
    obj = safe_load(path, what)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{what}: {path} is not a tdaf checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r}); "
            f"for plain torchvision/timm weights use pretrained= instead"
        )
    return obj


def model_from_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model saved in a tdaf checkpoint; returns ``(model in eval mode, meta)``."""
    from ..models import create_model

    ckpt = load_checkpoint(path, what)
    spec = ckpt["model"]
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{what}: {path}: weights do not fit {spec['name']} ({str(e).splitlines()[0]})") from e
    model.eval()
    meta = dict(ckpt.get("meta", {}))
    meta.setdefault("model_name", spec["name"])
    meta.setdefault("model_kwargs", dict(spec.get("kwargs", {})))
    return model, meta
