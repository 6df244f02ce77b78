"""tdaf models in timm's registry: ``timm.create_model("tdaf_resnet50", num_classes=10)``.

Each tdaf model becomes a timm entry point (this module is its timm "module", and
``default_cfgs`` holds its timm pretrained config: input size, mean/std, interpolation,
crop, classifier). Keyword arguments pass through to :func:`tdaf.create_model`
(``flows``, ``anar``, ``num_classes``, ...), and ``features_only=True`` /
``out_indices`` give the last flow's stage maps with a timm ``FeatureInfo``.

Nothing is downloaded: ``pretrained`` is a local file, given as
``pretrained="plain.pth"`` or ``pretrained=True, pretrained_cfg_overlay=dict(file="plain.pth")``
(timm's way to name a local file). Plain models whose name timm already uses (timm's own
``resnet50``, ``vgg16``, ``seresnet50``, ...) keep timm's entry: tdaf never overwrites
timm's models.

Namespaced names (``tdaf_timm/<timm name>``, ``timm/<timm name>``) cannot go through
``timm.create_model`` as they are: timm reads a name with ``/`` as a Hugging Face Hub
repository. :func:`register_in_timm` registers one under ``tdaf_timm__<timm name>`` (``/``
becomes ``__``), which ``timm.create_model`` then builds like any tdaf model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from timm.models import PretrainedCfg, generate_default_cfgs, model_entrypoint, resolve_pretrained_cfg
from timm.models import is_model as timm_is_model
from timm.models import register_model as timm_register_model
from torch import nn

from ._registry import create_model, list_models, model_cfg

__all__ = ["sync_timm_registry", "registered_in_timm", "shadowed_by_timm", "register_in_timm", "timm_alias"]

_TIMM_KEYS = {f.name for f in dataclasses.fields(PretrainedCfg)}
# torchvision's evaluation transform (resize 256, centre crop 224) for configs that do not say.
_DATA_DEFAULTS = dict(interpolation="bilinear", crop_pct=0.875, crop_mode="center")

# timm reads the pretrained configs of a module's entry points from its ``default_cfgs``.
default_cfgs: dict[str, Any] = {}
_OWN: list[str] = []
_SHADOWED: list[str] = []


def registered_in_timm() -> list[str]:
    """tdaf model names registered in timm by this module."""
    return list(_OWN)


def shadowed_by_timm() -> list[str]:
    """tdaf plain-model names that timm already has (left to timm)."""
    return list(_SHADOWED)


def _timm_cfg(name: str) -> dict[str, Any]:
    cfg = {**_DATA_DEFAULTS, **model_cfg(name)}
    out = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in _TIMM_KEYS}
    out.pop("architecture", None)
    return out


def _entrypoint(name: str, target: str | None = None) -> Callable[..., nn.Module]:
    # ``name``: the name in timm's registry; ``target``: the tdaf name it builds (default: the same).
    target = target or name

    def entrypoint(
        pretrained: bool | str | os.PathLike[str] = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> nn.Module:
        kwargs.pop("pretrained_model_args", None)  # timm's record of a saved folder's model_args (also in kwargs)
        resolved = resolve_pretrained_cfg(name, pretrained_cfg=pretrained_cfg,
                                          pretrained_cfg_overlay=pretrained_cfg_overlay)
        if isinstance(pretrained, (str, os.PathLike)):
            file: str | os.PathLike[str] | None = pretrained
        elif pretrained:
            file = resolved.file
            if not file:
                raise ValueError(
                    f"pretrained: tdaf never downloads weights; name a local state-dict file of the plain backbone: "
                    f"timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='plain.pth'))"
                )
        else:
            file = None
        if file is not None and os.path.isdir(file):  # timm's "local-dir:DIR": the folder tdaf.hub reads
            model = create_model(f"local-dir:{file}", **kwargs)
        else:
            model = create_model(target, pretrained=file, **kwargs)
        merged = {k: v for k, v in resolved.to_dict().items() if v is not None}
        merged.update(model.pretrained_cfg)
        merged.update(pretrained_cfg_overlay or {})
        model.pretrained_cfg = model.default_cfg = merged
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"tdaf model {target!r} (see tdaf.create_model)."
    return entrypoint


def sync_timm_registry() -> list[str]:
    """Register in timm every tdaf model not registered yet (call it after registering
    new tdaf models); returns the newly registered names."""
    new = []
    for name in list_models(task="classification"):  # timm's registry holds image classifiers
        if name in _OWN or name in _SHADOWED:
            continue
        if timm_is_model(name) and model_entrypoint(name).__module__ != __name__:
            _SHADOWED.append(name)
            continue
        default_cfgs.update(generate_default_cfgs({name: _timm_cfg(name)}))
        timm_register_model(_entrypoint(name))
        _OWN.append(name)
        new.append(name)
    return new


def timm_alias(name: str) -> str:
    """The name of tdaf model ``name`` in timm's registry: ``/`` becomes ``__``
    (``tdaf_timm/efficientnet_b0`` -> ``tdaf_timm__efficientnet_b0``)."""
    return name.replace("/", "__")


def register_in_timm(name: str) -> str:
    """Make the tdaf model ``name`` (typically ``tdaf_timm/<timm name>`` or
    ``timm/<timm name>``, which timm would read as a Hub id) buildable by
    ``timm.create_model`` under :func:`timm_alias` ``(name)``, and return that name.
    Registered names are returned as they are. Raises ValueError for an unknown or
    unsplittable model (``tdaf.create_model``'s message)."""
    alias = timm_alias(name)
    if alias in _OWN:
        return alias
    if timm_is_model(alias):
        raise ValueError(f"register_in_timm: timm already has a model named {alias!r}")
    cfg = model_cfg(name)  # unknown names raise here
    if cfg.get("task", "classification") != "classification":
        raise ValueError(f"register_in_timm: {name!r} is not an image classifier ({cfg['task']})")
    default_cfgs.update(generate_default_cfgs({alias: _timm_cfg(name)}))
    timm_register_model(_entrypoint(alias, target=name))
    _OWN.append(alias)
    return alias
