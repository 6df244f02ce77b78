"""Model registry: builders are registered functions whose bodies are data."""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = [
    "register_model", "register_prefix", "create_model", "list_models", "is_model", "model_cfg", "unknown_model_error",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, dict[str, Any]] = {}
# Name families resolved on demand ("tdaf_timm/<timm name>"): prefix -> resolver(rest) -> (builder, cfg).
# They are not listed by list_models() (every timm CNN would be one).
_PREFIXES: dict[str, Callable[[str], tuple[Callable[..., nn.Module], dict[str, Any]]]] = {}

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


def register_prefix(
    prefix: str, resolver: Callable[[str], tuple[Callable[..., nn.Module], dict[str, Any]]]
) -> None:
    """Resolve every name ``prefix + rest`` with ``resolver(rest) -> (builder, cfg)``; the
    resolver raises ValueError for a ``rest`` it cannot build."""
    if prefix in _PREFIXES:
        raise ValueError(f"model name prefix {prefix!r} is registered twice")
    _PREFIXES[prefix] = resolver


def _resolve(name: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    if name in _MODELS:
        return _MODELS[name], _CFGS[name]
    for prefix, resolver in _PREFIXES.items():
        if name.startswith(prefix):
            return resolver(name[len(prefix):])
    raise unknown_model_error(name)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style filter (``"tdaf_*"``)."""
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def is_model(name: str) -> bool:
    if name in _MODELS:
        return True
    try:
        _resolve(name)
    except ValueError:
        return False
    return True


def model_cfg(name: str) -> dict[str, Any]:
    """The default config of a registered model (a copy)."""
    return dict(_resolve(name)[1])


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

    ``features_only=True`` (with optional ``out_indices``) returns the backbone alone,
    whose forward gives the last flow's stage maps (C2..C5 for a ResNet), with timm's
    ``feature_info``. Names ``tdaf_timm/<timm name>`` wrap any sequential timm CNN.
    """
    builder, cfg = _resolve(name)
    tdaf_args = {k: v for k, v in zip(TDAF_ARGS, (flows, anar, eta, downsample)) if v is not None}
    if tdaf_args and not cfg.get("tdaf", False):
        # A model may take a subset (the multi-scale ablation: flows and downsample, no ANAR).
        allowed = cfg.get("tdaf_args", ())
        refused = [k for k in tdaf_args if k not in allowed]
        if refused and allowed:
            raise ValueError(
                f"{', '.join(refused)}: {name!r} does not take these (it takes {', '.join(allowed)})"
            )
        if refused:
            raise ValueError(
                f"{', '.join(tdaf_args)}: only TDAF models take these; {name!r} is a plain model "
                f"(use {cfg.get('tdaf_variant', 'tdaf_' + name)!r})"
            )
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes: got {num_classes!r}; allowed: an integer >= 0 (0 = no classifier)")
        kwargs["num_classes"] = num_classes
    if pretrained is not None:
        kwargs["pretrained"] = pretrained
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    model = builder(**tdaf_args, **kwargs)
    if features_only:
        from .features import StageFeatures

        return StageFeatures(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices: only used with features_only=True")
    return model
