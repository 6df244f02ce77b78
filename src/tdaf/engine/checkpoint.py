"""The tdaf checkpoint: its layout, reading it, and rebuilding the model it holds.

Files load with ``weights_only=True`` and save atomically (:mod:`tdaf.io.files`), so
opening a checkpoint never runs code from it and an interrupted save never destroys the
last good one.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import UserError
from ..io.files import atomic_save, first_line, load_state_dict_file, safe_load
from ..models import create_model
from ..r2dns import TDAF_ARCH_KEYS

__all__ = [
    "safe_load", "atomic_save", "load_state_dict_file", "checkpoint_payload", "load_checkpoint",
    "model_from_checkpoint", "model_from_payload", "CHECKPOINT_FORMAT", "state_dict_mismatch", "architecture", "build_from_spec",
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
        raise UserError(
            f"{what}: {path} is not a tdaf checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r}); "
            f"for plain torchvision/timm weights use pretrained= instead"
        )
    spec = obj.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(obj.get("state_dict"), dict):
        raise UserError(f"{what}: {path} is a damaged tdaf checkpoint (no model name or no state_dict)")
    return obj


def state_dict_mismatch(own: dict[str, Any], given: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """Which keys of ``given`` do not fit ``own`` (missing, unexpected, mis-shaped), the first
    few of each, as one readable string ("" when everything fits)."""
    missing = [k for k in own if k not in given and not k.endswith(ignore or ("\0",))]
    unexpected = [k for k in given if k not in own]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}" for k in given
              if k in own and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches (file vs model)", shapes)):
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


def architecture(model: torch.nn.Module) -> dict[str, Any]:
    """The settings that define a model's architecture beyond its name, as the model reports
    them (its ``pretrained_cfg``): the TDAF settings, resolved to their defaults."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {k: cfg[k] for k in TDAF_ARCH_KEYS if k in cfg}


def build_from_spec(spec: dict[str, Any], device: str | torch.device | None = None) -> torch.nn.Module:
    """The (untrained) model a checkpoint's ``model`` entry names; on the ``meta`` device it
    costs no memory (for comparing architectures)."""
    if device is None:
        return create_model(spec["name"], **spec.get("kwargs", {}))
    with torch.device(device):
        return create_model(spec["name"], **spec.get("kwargs", {}))


def model_from_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model saved in a tdaf checkpoint; returns ``(model in eval mode, meta)``."""
    return model_from_payload(load_checkpoint(path, what), path, what)


def model_from_payload(ckpt: dict[str, Any], path: str | os.PathLike[str],
                       what: str = "checkpoint") -> tuple[torch.nn.Module, dict[str, Any]]:
    """:func:`model_from_checkpoint` for a checkpoint already read by :func:`load_checkpoint`
    (``path`` only names it in messages)."""
    spec = ckpt["model"]
    try:
        model = build_from_spec(spec)
    except (ValueError, TypeError) as e:
        raise UserError(f"{what}: {path} names model {spec.get('name')!r} {spec.get('kwargs')}, which cannot "
                        f"be built here ({first_line(e)})") from e
    state = ckpt["state_dict"]
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise UserError(f"{what}: {path}: weights do not fit {spec['name']} {spec.get('kwargs', {})}: {problems}")
    model.load_state_dict(state, strict=True)
    model.eval()
    meta = dict(ckpt.get("meta", {}))
    meta.setdefault("model_name", spec["name"])
    meta.setdefault("model_kwargs", dict(spec.get("kwargs", {})))
    return model, meta
