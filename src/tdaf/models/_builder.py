"""The one build path of every model family: stages (plus channels, strides and a head)
in, a :class:`TDAFClassifier` over R2DNS (TDAF models) or :class:`StageNet` (plain
models) out, with its config recorded. The TDAF settings' defaults are R2DNS's own
(:data:`tdaf.r2dns.TDAF_DEFAULTS`); nothing here repeats them."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from torch import nn

from ..errors import UserError
from ..r2dns import TDAF_DEFAULTS, R2DNS, StageNet, Stride, resolve_attention_init
from .classifier import TDAFClassifier

__all__ = ["build_model", "paired_cfgs", "split_tdaf_kwargs", "tdaf_settings", "check_torchvision_args",
           "with_attention_init", "ModelArgumentError", "take_tdaf_kwargs", "reject_unknown", "argument_hint"]


class ModelArgumentError(TypeError, UserError):
    """A keyword argument that a model builder does not take: a ``TypeError``, as Python and
    timm answer an unknown argument (timm's model tests check it), and a :class:`UserError`
    (a ``ValueError``), the error of every other bad setting in tdaf (which the command line
    reports in one line)."""


def paired_cfgs(name: str, cfg: dict[str, Any], tdaf_name: str | None = None) -> dict[str, dict[str, Any]]:
    """The configs of a plain model ``name`` and of its TDAF variant (default
    ``tdaf_<name>``), linked to each other by ``tdaf_variant`` / ``baseline``."""
    tdaf_name = tdaf_name or "tdaf_" + name
    return {
        name: dict(cfg, tdaf=False, tdaf_variant=tdaf_name),
        tdaf_name: dict(cfg, tdaf=True, baseline=name),
    }


def split_tdaf_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(TDAF settings, everything else)`` of a builder's keyword arguments."""
    tdaf = {k: v for k, v in kwargs.items() if k in TDAF_DEFAULTS}
    rest = {k: v for k, v in kwargs.items() if k not in TDAF_DEFAULTS}
    return tdaf, rest


def reject_unknown(name: str, kwargs: Iterable[str], allowed: Collection[str] = ()) -> None:
    """:class:`ModelArgumentError` naming every argument of ``kwargs`` not in ``allowed``
    (with the closest allowed or TDAF name as a hint: ``flow`` -> ``flows``)."""
    unknown = [k for k in kwargs if k not in allowed]
    if not unknown:
        return
    plural = "s" if len(unknown) > 1 else ""
    raise ModelArgumentError(f"{name}: unexpected keyword argument{plural} {', '.join(map(repr, unknown))}"
                             f"{argument_hint(unknown, allowed)}")


def argument_hint(unknown: Sequence[str], allowed: Collection[str] = ()) -> str:
    """`` (did you mean 'flows'?)`` for misspelt argument names (closest allowed or TDAF name)."""
    known = sorted({*allowed, *TDAF_DEFAULTS})
    close = {k: c[0] for k in unknown if (c := difflib.get_close_matches(k, known, n=1))}
    if len(unknown) == 1 and close:
        return f" (did you mean {close[unknown[0]]!r}?)"
    return f" (did you mean {', '.join(f'{c!r} for {k!r}' for k, c in close.items())}?)" if close else ""


def take_tdaf_kwargs(name: str, cfg: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the TDAF settings (the keys of :data:`TDAF_DEFAULTS`) from ``kwargs`` and return
    them; :class:`ModelArgumentError` when model ``name`` (config ``cfg``) does not take them:
    a plain model takes none (or the subset ``cfg["tdaf_args"]``, the multi-scale ablation)."""
    tdaf, rest = split_tdaf_kwargs(kwargs)
    kwargs.clear()
    kwargs.update(rest)
    if cfg.get("tdaf", False) or not tdaf:
        return tdaf
    allowed = cfg.get("tdaf_args", ())
    refused = [k for k in tdaf if k not in allowed]
    if refused and allowed:
        raise ModelArgumentError(f"{', '.join(refused)}: {name!r} does not take these (it takes {', '.join(allowed)})")
    if refused:
        raise ModelArgumentError(f"{', '.join(tdaf)}: only TDAF models take these; {name!r} is a plain model "
                                 f"(use {cfg.get('tdaf_variant', 'tdaf_' + name)!r})")
    return tdaf


def with_attention_init(tdaf_kwargs: dict[str, Any], from_trained: bool) -> dict[str, Any]:
    """``tdaf_kwargs`` with ``attention_init`` resolved ("auto": identity over trained
    weights, the from-scratch default otherwise)."""
    eta = tdaf_kwargs.get("eta", TDAF_DEFAULTS["eta"])
    return dict(tdaf_kwargs, attention_init=resolve_attention_init(tdaf_kwargs.get("attention_init"), from_trained,
                                                                   eta if eta is not None else TDAF_DEFAULTS["eta"]))


def check_torchvision_args(
    name: str, *, drop_path_rate: float | None, output_stride: int | None, native_stride: int, in_chans: Any = 3
) -> None:
    """timm's common model arguments on a family built from torchvision's blocks: only
    their no-op values are accepted (a clear error instead of a TypeError from inside torchvision)."""
    if drop_path_rate not in (None, 0, 0.0):
        raise ValueError(
            f"drop_path_rate: got {drop_path_rate!r}; {name!r} is built from torchvision's blocks, which have no "
            f"drop path (allowed: None or 0). Stochastic depth is available on the timm-based families: "
            f"'tdaf_timm/<timm name>', tdaf_seresnet50, tdaf_mobilenetv1"
        )
    if output_stride not in (None, native_stride):
        raise ValueError(
            f"output_stride: got {output_stride!r}; {name!r} only has its native output stride {native_stride} "
            f"(no dilated variant)"
        )
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise ValueError(f"in_chans: got {in_chans!r}; allowed: an integer >= 1")


def tdaf_settings(backbone: R2DNS | StageNet) -> dict[str, Any]:
    """The TDAF settings to record in a model's ``pretrained_cfg`` (none for a plain model;
    flows and down-sampling only for flows without attention)."""
    if not isinstance(backbone, R2DNS):
        return {}
    if backbone.anar_name is None:
        return dict(flows=backbone.flows, downsample=backbone.down.mode)
    # The options beyond the paper are recorded where they differ from Table 1.
    extra = {k: getattr(backbone, k) for k, table1 in (("anar_min_width", 1), ("anar_up", "deconv"))
             if getattr(backbone, k) != table1}
    return dict(flows=backbone.flows, anar=backbone.anar_name, eta=backbone.eta, downsample=backbone.down.mode,
                **extra)


def build_model(
    name: str,
    stages: Sequence[nn.Module],
    channels: Sequence[int],
    strides: Sequence[Stride],
    cfg: dict[str, Any],
    *,
    tdaf: bool,
    num_classes: int,
    head: nn.Module | None = None,
    num_features: int | None = None,
    drop_rate: float = 0.0,
    global_pool: str = "avg",
    depthwise: bool = False,
    in_chans: int | None = 3,
    model_cls: type[TDAFClassifier] = TDAFClassifier,
    stem_info: Sequence[dict[str, Any]] = (),
    from_trained: bool = False,
    **tdaf_kwargs: Any,
) -> TDAFClassifier:
    """Wrap ``stages`` in R2DNS (``tdaf=True``, with ``tdaf_kwargs``: ``flows``, ``anar``,
    ``eta``, ``downsample``; R2DNS's defaults otherwise) or in the plain :class:`StageNet`,
    and put ``head`` (default: timm's ``ClassifierHead``) on the last flow's last map.

    ``cfg`` becomes the model's ``pretrained_cfg``, with ``architecture=name`` and the
    TDAF settings used. Plain and ``flows=1`` TDAF models share one weight layout.
    ``stem_info`` lists the feature levels (timm's numbering starts with them) computed
    inside the first stage, such as a ResNet's stem. ``from_trained``: the stages hold
    trained weights (``pretrained=``), so ``attention_init="auto"`` starts attention as
    the identity."""
    reject_unknown(name, tdaf_kwargs, TDAF_DEFAULTS)
    if tdaf:
        tdaf_kwargs = with_attention_init(tdaf_kwargs, from_trained)
        backbone: R2DNS | StageNet = R2DNS(stages, channels, strides, depthwise=depthwise, in_chans=in_chans,
                                           **tdaf_kwargs)
    else:
        take_tdaf_kwargs(name, dict(cfg, tdaf=False), dict(tdaf_kwargs))  # any TDAF setting is an error here
        backbone = StageNet(stages, channels, strides, in_chans=in_chans)
    cfg = dict(cfg)
    cfg.update(tdaf_settings(backbone), architecture=name)
    model = model_cls(backbone, num_classes, head=head, num_features=num_features, drop_rate=drop_rate,
                      global_pool=global_pool, pretrained_cfg=cfg)
    model.stem_info = [dict(level) for level in stem_info]
    return model
