"""Model registry: builders are registered functions whose bodies are data."""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "model_cfg", "unknown_model_error"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, dict[str, Any]] = {}

# Arguments that only a TDAF model takes; None means "the builder's default".
TDAF_ARGS = ("flows", "anar", "eta", "downsample")


def register_model(cfg: dict[str, Any] | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name, with its default config (input size,
    mean/std, classifier name, whether it is a TDAF model, its plain baseline, ...)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _CFGS[name] = dict(cfg or {})
        return fn

    return wrap


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style filter (``"tdaf_*"``)."""
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def is_model(name: str) -> bool:
    return name in _MODELS


def model_cfg(name: str) -> dict[str, Any]:
    """The default config of a registered model (a copy)."""
    if name not in _CFGS:
        raise unknown_model_error(name)
    return dict(_CFGS[name])


def unknown_model_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return ValueError(f"model: unknown name {name!r}{hint} (see tdaf.list_models())")


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    flows: int | None = None,
    anar: str | None = None,
    eta: float | None = None,
    downsample: str | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    ``flows`` (default 3), ``anar`` (``"anar3"``), ``eta`` (0.5) and ``downsample``
    (``"avg"``) configure TDAF models (``tdaf_*``); giving them to a plain model is an
    error. ``pretrained`` is a local file holding the plain backbone's state dict in
    torchvision or timm layout; nothing is ever downloaded.
    """
    if name not in _MODELS:
        raise unknown_model_error(name)
    tdaf_args = {k: v for k, v in zip(TDAF_ARGS, (flows, anar, eta, downsample)) if v is not None}
    if tdaf_args and not _CFGS[name].get("tdaf", False):
        raise ValueError(
            f"{', '.join(tdaf_args)}: only TDAF models take these; {name!r} is a plain model "
            f"(use {_CFGS[name].get('tdaf_variant', 'tdaf_' + name)!r})"
        )
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes: got {num_classes!r}; allowed: an integer >= 0 (0 = no classifier)")
        kwargs["num_classes"] = num_classes
    if pretrained is not None:
        kwargs["pretrained"] = pretrained
    return _MODELS[name](**tdaf_args, **kwargs)
