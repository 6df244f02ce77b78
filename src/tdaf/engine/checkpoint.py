"""Safe loading and atomic saving of weights and checkpoints.

Opening a file never runs code from it: everything loads with
``torch.load(..., weights_only=True)`` (or safetensors), and a pickle that asks for more
is refused with a clear error. Saving writes a temporary file in the same folder, syncs
it and renames it over the target, so an interrupted save never destroys the last good
file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "safe_load", "atomic_save", "load_state_dict_file", "checkpoint_payload", "load_checkpoint",
    "model_from_checkpoint", "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "tdaf-checkpoint/1"


def safe_load(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """Load a torch file with ``weights_only=True``; clear errors for every failure.

    ``what`` names the parameter or role of the file in error messages.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: file not found: {p}")
    if p.is_dir():
        raise ValueError(f"{what}: {p} is a directory, expected a file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{what}: {p} is not a readable safetensors file ({e})") from e
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{what}: refused to load {p}: it contains Python objects beyond tensors and plain containers, "
            f"and loading it could run code from the file (weights_only=True). Re-save it as a plain "
            f"state dict. Details: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{what}: {p} is truncated or not a PyTorch file ({str(e).splitlines()[0]})") from e


def load_state_dict_file(path: str | os.PathLike[str], what: str = "pretrained") -> dict[str, torch.Tensor]:
    """A state dict from a file: a bare state dict, or one nested under ``state_dict``,
    ``model`` or ``model_state_dict`` (``module.`` prefixes from DDP are removed)."""
    obj = safe_load(path, what)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{what}: {path} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


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
