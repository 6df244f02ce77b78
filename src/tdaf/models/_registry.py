"""Model registry, as timm's: a model is a function registered under its own name, whose
body is data; its config is data too (the module's ``default_cfgs[name]``).

A *namespace* is one registered function for a family of names ``<namespace>/<variant>``
(``tdaf_timm/efficientnet_b0``: any timm CNN), found by the same lookup as every model.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, overload

import torch
from torch import nn

from ..r2dns import TDAF_DEFAULTS
from ._builder import ModelArgumentError, take_tdaf_kwargs
from ._pretrained import PretrainedLayoutError
from .features import FeatureMaps, StageFeatures

__all__ = ["register_model", "register_model_source", "register_own_layout_loader", "create_model", "list_models", "is_model", "model_cfg", "unknown_model_error"]

Builder = Callable[..., nn.Module]
CfgFn = Callable[[str], dict[str, Any]]

_MODELS: dict[str, Builder] = {}
_CFGS: dict[str, dict[str, Any]] = {}
# namespace -> (builder(variant, **kwargs), cfg(variant)); not listed by list_models()
# (every timm CNN would be one).
_NAMESPACES: dict[str, tuple[Builder, CfgFn]] = {}
# Registered by the layers above (tdaf.hub, tdaf.engine.init_from), which the models may not import.
_SOURCES: dict[str, Builder] = {}
_OWN_LAYOUT: list[Callable[[nn.Module, Any, str | None, Exception], None]] = []

# Arguments that only a TDAF model takes (the keys of TDAF_DEFAULTS); their defaults are R2DNS's.
TDAF_ARGS = tuple(TDAF_DEFAULTS)


def _factory_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    raise ValueError(f"dtype: got {dtype!r}; allowed: a floating-point torch.dtype (torch.float32, torch.bfloat16, "
                     f"...) or None")


def _with_factory_kwargs(fn: Builder) -> Builder:
    """``fn`` taking timm's factory arguments ``device`` and ``dtype`` too: the model is
    built under ``torch.device(device)`` (parameters and buffers, MFBN statistics included,
    are created there: ``device="meta"`` allocates nothing) and its floating-point tensors
    are then cast to ``dtype``."""

    @functools.wraps(fn)
    def builder(*args: Any, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                **kwargs: Any) -> nn.Module:
        dtype = _factory_dtype(dtype)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = fn(*args, **kwargs)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)  # anything built with an explicit device, e.g. a timm model
        return model

    return builder


@overload
def register_model(cfg: Builder) -> Builder: ...
@overload
def register_model(
    cfg: dict[str, Any] | CfgFn | None = None, *, namespace: str | None = None
) -> Callable[[Builder], Builder]: ...
def register_model(
    cfg: dict[str, Any] | CfgFn | Builder | None = None, *, namespace: str | None = None
) -> Builder | Callable[[Builder], Builder]:
    """Register a builder under its function name.

    ``@register_model`` (bare, timm's form) takes the config from the defining module's
    ``default_cfgs[name]``; ``@register_model(cfg)`` gives it (input size, mean/std,
    classifier, whether it is a TDAF model, its plain baseline, ...).
    ``@register_model(cfg_fn, namespace="ns")`` registers the family ``ns/<variant>``:
    the builder takes the variant as its first argument and ``cfg_fn(variant)`` gives the
    config, raising ValueError for a variant it cannot build.

    Every registered builder also takes timm's factory arguments ``device`` and ``dtype``
    (the function returned, and kept in the defining module, is the builder with them)."""
    if callable(cfg) and namespace is None:
        return _register(cfg, None, None)
    return lambda fn: _register(fn, cfg, namespace)  # type: ignore[arg-type]


def _register(fn: Builder, cfg: dict[str, Any] | CfgFn | None, namespace: str | None) -> Builder:
    fn = _with_factory_kwargs(fn)
    if namespace is not None:
        if namespace in _NAMESPACES or "/" in namespace:
            raise ValueError(f"model namespace {namespace!r} is registered twice or contains '/'")
        if not callable(cfg):
            raise ValueError(f"model namespace {namespace!r}: cfg must be a function of the variant name")
        _NAMESPACES[namespace] = (fn, cfg)
        return fn
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    if cfg is None:
        cfg = getattr(sys.modules.get(fn.__module__), "default_cfgs", {}).get(name, {})
    _MODELS[name] = fn
    _CFGS[name] = dict(cfg)  # type: ignore[arg-type]
    return fn


def _resolve(name: str) -> tuple[Builder, dict[str, Any]]:
    if name in _MODELS:
        return _MODELS[name], _CFGS[name]
    namespace, slash, variant = name.partition("/")
    if slash and namespace in _NAMESPACES:
        builder, cfg_fn = _NAMESPACES[namespace]
        cfg = cfg_fn(variant)
        return functools.partial(builder, variant), cfg
    raise unknown_model_error(name)


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style filter (``"tdaf_*"``),
    ``task`` keeps the models of one task (a config's ``task`` key; classification when absent)."""
    names = sorted(_MODELS)
    if task is not None:
        names = [n for n in names if _CFGS[n].get("task", "classification") == task]
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
    # Names that extend the one given (tdaf_resnext50 -> tdaf_resnext50_32x4d) first: with many
    # families registered, plain similarity would rank e.g. tdaf_r3d_resnet50 above them.
    extended = sorted(n for n in _MODELS if name and n.startswith(name))[:5]
    close = extended + [n for n in difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
                        if n not in extended]
    close = close[:5]
    hint = f"; closest: {', '.join(close)}" if close else ""
    return ValueError(f"model: unknown name {name!r}{hint} (see tdaf.list_models())")


def _build(builder: Builder, name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return builder(**kwargs)
    except TypeError as e:  # timm's contract: an unknown argument is a TypeError (named here)
        if str(e).startswith(name + ":"):
            raise
        raise (ModelArgumentError if isinstance(e, ModelArgumentError) else TypeError)(f"{name}: {e}") from e


def register_model_source(prefix: str, load: Callable[..., nn.Module]) -> None:
    """Let ``create_model(prefix + "REST", **kwargs)`` return ``load(REST, name, **kwargs)``:
    how :mod:`tdaf.hub` adds timm's ``local-dir:`` names (a layer above the models)."""
    _SOURCES[prefix] = load


def register_own_layout_loader(load: Callable[[nn.Module, Any, str | None, Exception], None]) -> None:
    """The loader of a ``pretrained`` file that is not in torchvision/timm layout:
    ``load(model, path, attention_init, refused)`` (:mod:`tdaf.engine.init_from` registers
    :func:`~tdaf.engine.init_from.load_in_own_names`; it raises ``refused`` when the file is
    not in tdaf's names either)."""
    _OWN_LAYOUT.clear()
    _OWN_LAYOUT.append(load)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    The TDAF settings, the keys of :data:`tdaf.r2dns.TDAF_DEFAULTS` (``flows``, ``anar``,
    ``eta``, ``downsample``, ``attention_init``; defaults: the paper's 3 flows, ANAR-3,
    0.5, average pooling), configure TDAF models (``tdaf_*``); None means the default, and
    giving one to a plain model is a :class:`~tdaf.ModelArgumentError`
    (a TypeError, as for any argument the model does not take). ``attention_init``
    (``"auto"``, ``"identity"``, ``"random"``) decides how the ANARs start: "identity"
    makes the model compute its plain counterpart at step 0; "auto" is "identity" with
    ``pretrained`` weights and the from-scratch default otherwise. ``pretrained`` is a
    local file: the plain network's state dict in torchvision or timm layout, or what
    ``tdaf train --init-from`` takes (a state dict of a tdaf model, plain or TDAF, or a
    tdaf checkpoint), loaded by :func:`tdaf.init_from`; either way, with ``attention_init``
    "auto" the new ANARs start as the identity and a TDAF model computes the plain one at
    step 0. Nothing is ever downloaded. ``name`` ``"local-dir:DIR"`` rebuilds the model
    saved in the folder ``DIR`` (``config.json`` + ``model.safetensors``, as timm's
    ``save_for_hf`` and ``tdaf export --format timm`` write it) with its weights. ``device`` and ``dtype`` (timm's factory arguments) build
    the model on that device (``"meta"``: no memory) and cast it to that dtype.

    ``features_only=True`` (with optional ``out_indices``) returns the backbone alone,
    whose forward gives the last flow's stage maps (C2..C5 for a ResNet), with timm's
    ``feature_info``; with ``feature_cls="dict"`` it returns them as an ``OrderedDict``
    and has torchvision's ``out_channels`` (:class:`~tdaf.models.features.FeatureMaps`,
    for ``FeaturePyramidNetwork`` and detection heads). Names ``tdaf_timm/<timm name>``
    and ``timm/<timm name>`` wrap any sequential timm CNN.
    """
    source = next((p for p in _SOURCES if isinstance(name, str) and name.startswith(p)), None)
    if source is not None:  # "local-dir:DIR": a saved folder (tdaf.hub)
        if pretrained is not None:
            raise ValueError(f"pretrained: got {pretrained!r} with {name!r}; the folder holds the weights (give "
                             f"one of them)")
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return _SOURCES[source](name[len(source):], name, **extra, **kwargs)
    builder, cfg = _resolve(name)
    kwargs = {k: v for k, v in kwargs.items() if not (k in TDAF_DEFAULTS and v is None)}
    tdaf_args = take_tdaf_kwargs(name, cfg, kwargs)
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes: got {num_classes!r}; allowed: an integer >= 0 (0 = no classifier)")
        kwargs["num_classes"] = num_classes
    if pretrained is not None:
        kwargs["pretrained"] = pretrained
    features_only = kwargs.pop("features_only", False)
    out_indices: int | Sequence[int] | None = kwargs.pop("out_indices", None)
    feature_cls = kwargs.pop("feature_cls", None)
    if feature_cls not in (None, "list", "dict"):
        raise ValueError(f"feature_cls: got {feature_cls!r}; allowed: 'list' (default), 'dict'")
    if not features_only and (out_indices is not None or feature_cls is not None):
        raise ValueError("out_indices, feature_cls: only used with features_only=True")
    try:
        model = _build(builder, name, {**tdaf_args, **kwargs})
    except PretrainedLayoutError as refused:  # not the torchvision/timm layout: tdaf's own, as --init-from reads
        model = _build(builder, name, {**tdaf_args, **{k: v for k, v in kwargs.items() if k != "pretrained"}})
        if not _OWN_LAYOUT:
            raise
        _OWN_LAYOUT[0](model, pretrained, tdaf_args.get("attention_init"), refused)
    if features_only:
        return (FeatureMaps if feature_cls == "dict" else StageFeatures)(model, out_indices)
    return model
