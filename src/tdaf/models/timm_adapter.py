"""Any timm CNN as a TDAF backbone (paper §3: TDAF wraps a backbone split into stages).

timm describes each CNN's feature levels (``feature_info``: module name, channels and
reduction of each level). This module walks the model's top-level chain of modules the
way timm's ``FeatureListNet`` does (one level of ``nn.Sequential`` flattened), cuts it
after each chosen level, and checks by running both that the chain of stages reproduces
the model's own ``forward_features``. The stages go into R2DNS (``tdaf_timm/<name>``)
or a plain :class:`StageNet` (``timm/<name>``); whatever ``forward_features`` runs after
the last level (EfficientNet's ``conv_head``/``bn2``, RegNet's ``final_conv``) and the
model's own ``forward_head`` form the classifier head, so ``flows=1`` is exactly the timm
model.

Stage levels default to the feature levels at reduction >= 4 (C2..C5 for a ResNet):
the level at reduction 2 is a stem, and an ANAR on it would work at half the input
resolution. Only BatchNorm layers become MFBN; models normalised otherwise (ConvNeXt's
LayerNorm) share their norm layers across flows.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from timm.models import model_entrypoint
from torch import nn

from ..layers.mfbn import FLOW_NORMS
from ._builder import ModelArgumentError, argument_hint, build_model, take_tdaf_kwargs
from ._pretrained import load_pretrained
from ._registry import register_model
from .classifier import TDAFClassifier

__all__ = ["TimmHead", "TimmStages", "split_timm_model", "create_timm_model", "split_norm_act", "timm_cfg"]

# Namespaces of the registry: "tdaf_timm/<timm name>" and "timm/<timm name>".
TDAF_NAMESPACE = "tdaf_timm"
PLAIN_NAMESPACE = "timm"
TDAF_PREFIX = TDAF_NAMESPACE + "/"
PLAIN_PREFIX = PLAIN_NAMESPACE + "/"

_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class TimmHead(nn.Module):
    """The part of a timm model after its last stage: the modules ``forward_features``
    runs after the last feature level (``neck``), then the model's ``forward_head``.

    ``model`` is the timm model with its stage and neck modules replaced by
    ``nn.Identity`` (they live in the backbone and in ``neck``), so no weight is held twice.
    """

    def __init__(self, model: nn.Module, neck: nn.Sequential) -> None:
        super().__init__()
        self.neck = neck
        self.model = model

    @property
    def fc(self) -> nn.Module:
        return self.model.get_classifier()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(self.neck(x), pre_logits=pre_logits)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type is None:
            self.model.reset_classifier(num_classes)
        else:
            self.model.reset_classifier(num_classes, global_pool=pool_type)


@dataclass
class TimmStages:
    """A timm model split into stages: ``stages[i]`` ends at feature level ``levels[i]``."""

    stages: list[nn.Module]
    channels: list[int]
    strides: list[int]
    levels: list[int]
    head: TimmHead
    num_features: int


def _not_sequential(name: str, why: str) -> ValueError:
    return ValueError(
        f"timm model {name!r} cannot be used as a TDAF backbone: it cannot be split into sequential "
        f"stages ({why})"
    )


def _feature_levels(model: nn.Module, name: str) -> list[dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    info = getattr(info, "info", info)  # timm's FeatureInfo or a plain list of dicts
    if not isinstance(info, (list, tuple)) or not info:
        raise _not_sequential(name, "timm gives no feature_info for it")
    return [dict(level) for level in info]


def _choose_levels(info: list[dict[str, Any]], stage_levels: Sequence[int] | None, name: str) -> list[int]:
    if stage_levels is None:
        candidates = [i for i, f in enumerate(info) if f["reduction"] >= 4]
        # Several levels at one reduction (e.g. a conv and its pool): the deepest one ends the stage.
        levels = [i for i in candidates if not any(
            j > i and info[j]["reduction"] == info[i]["reduction"] for j in candidates)]
    else:
        n = len(info)
        if any(not isinstance(i, int) or not -n <= i < n for i in stage_levels):
            raise ValueError(
                f"stage_levels: got {list(stage_levels)}; allowed: indices into the {n} feature levels of "
                f"{name!r} (reductions {[f['reduction'] for f in info]})"
            )
        levels = sorted({i % n for i in stage_levels})
    reductions = [info[i]["reduction"] for i in levels]
    if len(levels) < 2 or any(b <= a for a, b in zip(reductions, reductions[1:])):
        raise _not_sequential(
            name, f"need at least 2 feature levels with increasing reductions, got reductions {reductions}"
        )
    if any(b % a for a, b in zip(reductions, reductions[1:])):
        raise _not_sequential(name, f"feature reductions {reductions} are not integer multiples of each other")
    return levels


def _module_chain(model: nn.Module, level_modules: Sequence[str]) -> list[tuple[str, str, nn.Module]]:
    """The model's top-level modules in order, as timm's ``FeatureListNet`` runs them: a
    top-level ``nn.Sequential`` is opened one level when a feature level names one of its
    children (EfficientNet's ``blocks.2``), and kept whole otherwise (ResNet's ``layer1``)."""
    chain = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and any(m.startswith(name + ".") for m in level_modules):
            chain.extend((f"{name}_{sub}", f"{name}.{sub}", c) for sub, c in child.named_children())
        else:
            chain.append((name, name, child))
    return chain


def _set_module(root: nn.Module, dotted: str, value: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, value)


def _call_order(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> tuple[list[int], Any]:
    order: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, i=i: order.append(i)) for i, m in enumerate(modules)]
    try:
        ref = model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return order, ref


def split_timm_model(
    model: nn.Module, name: str, stage_levels: Sequence[int] | None = None, check_size: int | None = None
) -> TimmStages:
    """Cut a timm model into sequential stages at its feature levels.

    Raises ValueError (naming the model) when the features are not produced by a chain
    of the model's top-level modules: a level nested inside a block, modules run out of
    order or twice, code between modules, or non-tensor stage outputs (e.g. HRNet, Xception, ViT).
    ``model`` is taken apart: its stage modules move to the returned stages.
    """
    info = _feature_levels(model, name)
    levels = _choose_levels(info, stage_levels, name)
    flat = _module_chain(model, [info[lv]["module"] for lv in levels])  # (flat name, dotted name, module)
    position = {dotted: i for i, (_, dotted, _) in enumerate(flat)}
    ends = []
    for lv in levels:
        module_name = info[lv]["module"]
        if module_name not in position:
            raise _not_sequential(name, f"its feature level {module_name!r} is not a module of its top-level "
                                        f"chain (it is nested inside a block, or a separate branch)")
        ends.append(position[module_name])
    if ends != sorted(set(ends)):
        raise _not_sequential(name, "its feature levels are not in module order")

    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    if check_size is None:
        fixed = pcfg.get("fixed_input_size", False) and pcfg.get("input_size")
        check_size = pcfg["input_size"][-1] if fixed else max(64, 2 * int(info[-1]["reduction"]))
    in_chans = _in_chans(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # Drawn on the CPU (its generator's device) whatever device context is active, then moved.
            x = torch.randn(1, in_chans, check_size, check_size, generator=torch.Generator().manual_seed(0),
                            device="cpu")
            x = x.to(device)
            try:
                order, ref = _call_order(model, [m for _, _, m in flat], x.clone())
            except Exception as small_error:  # e.g. Inception's unpadded convs: retry at the model's own size
                size = int(pcfg.get("input_size", (3, 224, 224))[-1])
                x = torch.randn(1, in_chans, size, size, generator=torch.Generator().manual_seed(0),
                                device="cpu").to(device)
                try:
                    order, ref = _call_order(model, [m for _, _, m in flat], x.clone())
                except Exception as e:  # any failure of the model itself: report it with the model's name
                    raise _not_sequential(
                        name, f"its forward_features failed on {check_size}x{check_size} and {size}x{size} inputs: "
                              f"{e}") from small_error
            if order != sorted(set(order)):
                raise _not_sequential(name, "forward_features runs its modules out of order or more than once")
            missing = [flat[e][1] for e in ends if e not in order]
            if missing:
                raise _not_sequential(name, f"forward_features never calls its feature modules {missing}")
            y: Any = x.clone()
            for i in order:
                y = flat[i][2](y)
                if i in ends:
                    lv = levels[ends.index(i)]
                    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != info[lv]["num_chs"]:
                        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                        raise _not_sequential(
                            name, f"feature level {info[lv]['module']!r} gives {shape}, expected a (B, "
                                  f"{info[lv]['num_chs']}, H, W) map")
            # On the meta device (building without memory, e.g. to count parameters and MACs)
            # only shapes can be compared.
            same = isinstance(y, torch.Tensor) and y.shape == ref.shape and (
                device.type == "meta" or torch.allclose(y, ref, rtol=1e-4, atol=1e-5))
            if not same:
                raise _not_sequential(
                    name, "running its top-level modules one after another does not reproduce forward_features "
                          "(it has connections across stages or code between modules)")
    finally:
        model.train(was_training)

    stages: list[nn.Module] = []
    start = -1
    for end in ends:
        members = [i for i in order if start < i <= end]
        stages.append(nn.Sequential(OrderedDict((flat[i][0], flat[i][2]) for i in members)))
        start = end
    for stage in stages[1:]:
        _no_inplace_entry(stage)
    neck = nn.Sequential(OrderedDict((flat[i][0], flat[i][2]) for i in order if i > ends[-1]))
    # What stays in the model is what forward_head needs; stage and neck modules (and modules
    # before the last level that forward_features never runs) are removed to avoid holding them twice.
    for i, (_, dotted, _) in enumerate(flat):
        if i <= ends[-1] or i in order:
            _set_module(model, dotted, nn.Identity())
    channels = [int(info[lv]["num_chs"]) for lv in levels]
    reductions = [int(info[lv]["reduction"]) for lv in levels]
    strides = [reductions[0]] + [b // a for a, b in zip(reductions, reductions[1:])]
    num_features = int(getattr(model, "num_features", channels[-1]))
    return TimmStages(stages, channels, strides, levels, TimmHead(model, neck), num_features)


def _no_inplace_entry(stage: nn.Module) -> None:
    # R2DNS keeps each stage output for the next flow's ANAR while the next stage runs on
    # it: a stage must not start by overwriting its input (e.g. a leading ReLU(inplace=True)).
    first = stage
    while len(first._modules) > 0:
        first = next(iter(first._modules.values()))
        if getattr(first, "inplace", False) is True:
            first.inplace = False


def _in_chans(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def split_norm_act(module: nn.Module, name: str) -> nn.Module:
    """Replace timm's ``BatchNormAct2d`` (BatchNorm + dropout + activation in one module)
    by ``Sequential(bn, drop, act)`` with a plain BatchNorm, so that R2DNS turns the
    BatchNorm into MFBN and keeps the activation. Any other BatchNorm subclass is an error:
    MFBN would silently drop whatever it adds."""
    if isinstance(module, (BatchNormAct2d, SyncBatchNormAct)):
        bn = nn.BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                            affine=module.affine, track_running_stats=module.track_running_stats)
        bn.load_state_dict(module.state_dict(), strict=False)
        bn.train(module.training)
        return nn.Sequential(OrderedDict(bn=bn, drop=module.drop, act=module.act))
    if isinstance(module, _PLAIN_BN) and type(module) not in _PLAIN_BN and not isinstance(module, FLOW_NORMS):
        raise ValueError(
            f"timm model {name!r}: its normalisation layer {type(module).__name__} is a BatchNorm subclass that "
            f"MFBN cannot replace"
        )
    for child_name, child in module.named_children():
        new = split_norm_act(child, name)
        if new is not child:
            setattr(module, child_name, new)
    return module


def _classifier_names(net: nn.Module) -> tuple[str, ...]:
    """Module names of the timm model's classifier (its pretrained-file keys to skip when
    the class count differs)."""
    classifier = net.get_classifier()
    return tuple(n for n, m in net.named_modules() if m is classifier and n)


def create_timm_model(
    timm_name: str,
    *,
    tdaf: bool,
    name: str | None = None,
    make_net: Callable[..., nn.Module] | None = None,
    cfg: dict[str, Any] | None = None,
    num_classes: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    depthwise: bool = False,
    stage_levels: Sequence[int] | None = None,
    **kwargs: Any,
) -> TDAFClassifier:
    """Build a timm CNN (never with timm's pretrained download), load ``pretrained`` (a local
    state-dict file in timm layout) into it, split it into stages, and wrap them in R2DNS
    (``tdaf=True``) or :class:`StageNet`. TDAF settings in ``kwargs`` (``flows``, ``anar``,
    ``eta``, ``downsample``) go to R2DNS; the others to the timm model (``drop_rate``,
    ``drop_path_rate``, ``in_chans``, ...), or to ``make_net`` in place of
    ``timm.create_model(timm_name)``."""
    cfg = dict(cfg or timm_cfg(timm_name, tdaf=tdaf))
    name = name or (TDAF_PREFIX if tdaf else PLAIN_PREFIX) + timm_name
    tdaf_kwargs = take_tdaf_kwargs(name, dict(cfg, tdaf=tdaf), kwargs)
    timm_kwargs = kwargs
    num_classes = cfg["num_classes"] if num_classes is None else num_classes
    try:
        if make_net is not None:
            net = make_net(num_classes=max(num_classes, 1), **timm_kwargs)
        else:
            net = timm.create_model(timm_name, pretrained=False, num_classes=max(num_classes, 1), **timm_kwargs)
    except TypeError as e:  # timm's contract: an unknown argument is a TypeError
        bad = re.findall(r"unexpected keyword argument '(\w+)'", str(e))
        raise ModelArgumentError(f"{name}: bad argument for the timm model: {e}{argument_hint(bad)}") from e
    timm_levels = _feature_levels(net, timm_name) if getattr(net, "feature_info", None) else []
    if pretrained is not None:
        load_pretrained(net, pretrained, name, classifier=_classifier_names(net))
    if num_classes == 0:
        net.reset_classifier(0)
    split = split_timm_model(net, timm_name, stage_levels)
    stages = [split_norm_act(s, timm_name) for s in split.stages]
    cfg.update(timm_model=timm_name, stage_levels=split.levels)
    if tdaf:
        cfg["depthwise"] = depthwise
    elif depthwise:
        raise ModelArgumentError(f"depthwise: only TDAF models take it; {name!r} is a plain model")
    # timm's levels before the first stage's (a stem at reduction 2) are computed inside stage 1;
    # they keep their numbers, so out_indices copied from timm code select the same maps.
    stem_info = [dict(num_chs=int(f["num_chs"]), reduction=f["reduction"],
                      module="backbone.stages.0." + str(f["module"]).replace(".", "_"))
                 for f in timm_levels[:split.levels[0]]]
    model = build_model(name, stages, split.channels, split.strides, cfg, tdaf=tdaf, num_classes=num_classes,
                        head=split.head, num_features=split.num_features, in_chans=int(timm_kwargs.get("in_chans", 3)),
                        stem_info=stem_info, from_trained=pretrained is not None,
                        **(dict(depthwise=depthwise) if tdaf else {}), **tdaf_kwargs)
    # Where the classifier and first conv ended up (timm's pretrained-config fields).
    names = {id(m): n for n, m in model.named_modules()}
    if id(model.get_classifier()) in names:
        model.pretrained_cfg["classifier"] = names[id(model.get_classifier())]
    first_conv = next((n for n, m in model.backbone.stages[0].named_modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        model.pretrained_cfg["first_conv"] = "backbone.stages.0." + first_conv
    model.head_hidden_size = int(getattr(net, "head_hidden_size", split.num_features))
    return model


def timm_cfg(timm_name: str, *, tdaf: bool, **extra: Any) -> dict[str, Any]:
    """Our config for a timm model: its data config (input size, mean/std, interpolation,
    crop) from timm's default pretrained config, and TDAF's keys."""
    pcfg = timm.models.get_pretrained_cfg(timm_name)
    src = pcfg.to_dict() if pcfg is not None else {}
    cfg = dict(
        input_size=tuple(src.get("input_size", (3, 224, 224))),
        pool_size=tuple(src.get("pool_size") or (7, 7)),
        mean=tuple(src.get("mean", IMAGENET_DEFAULT_MEAN)),
        std=tuple(src.get("std", IMAGENET_DEFAULT_STD)),
        interpolation=src.get("interpolation", "bilinear"),
        crop_pct=src.get("crop_pct", 0.875),
        crop_mode=src.get("crop_mode", "center"),
        num_classes=src.get("num_classes", 1000) or 1000,
        # TimmHead keeps the timm model (minus its stages) as head.model; the stem is in stage 1.
        classifier="head.model." + _first_name(src.get("classifier"), "fc"),
        first_conv="backbone.stages.0." + _first_name(src.get("first_conv"), "conv1"),
        family="timm",
        tdaf=tdaf,
    )
    if tdaf:
        cfg["baseline"] = PLAIN_PREFIX + timm_name
    else:
        cfg["tdaf_variant"] = TDAF_PREFIX + timm_name
    cfg.update(extra)
    return cfg


def _first_name(value: str | Sequence[str] | None, default: str) -> str:
    if not value:
        return default
    return value if isinstance(value, str) else value[0]


def _is_timm_cnn(timm_name: str) -> bool:
    # tdaf's own entries in timm's registry (tdaf.models.timm_registry) are not timm CNNs to wrap.
    return "." not in timm_name and timm.is_model(timm_name) and not model_entrypoint(timm_name).__module__.startswith("tdaf.")


def _namespace_cfg(tdaf: bool) -> Callable[[str], dict[str, Any]]:
    prefix = TDAF_PREFIX if tdaf else PLAIN_PREFIX

    def cfg(timm_name: str) -> dict[str, Any]:
        if not _is_timm_cnn(timm_name):
            names = [n for n in timm.list_models() if not n.startswith("tdaf_")]
            close = [c for c in difflib.get_close_matches(timm_name, names, n=5, cutoff=0.6) if _is_timm_cnn(c)]
            hint = f"; closest: {', '.join(prefix + c for c in close)}" if close else ""
            raise ValueError(
                f"model: unknown timm model {timm_name!r} in {prefix + timm_name!r}{hint} (see timm.list_models())"
            )
        return timm_cfg(timm_name, tdaf=tdaf)

    return cfg


@register_model(_namespace_cfg(True), namespace=TDAF_NAMESPACE)
def tdaf_timm_model(timm_name: str, **kwargs: Any) -> TDAFClassifier:
    """TDAF over any sequential timm CNN: ``tdaf_timm/<timm name>``."""
    return create_timm_model(timm_name, tdaf=True, **kwargs)


@register_model(_namespace_cfg(False), namespace=PLAIN_NAMESPACE)
def timm_model(timm_name: str, **kwargs: Any) -> TDAFClassifier:
    """A sequential timm CNN as plain stages: ``timm/<timm name>`` (the baseline of ``tdaf_timm/``)."""
    return create_timm_model(timm_name, tdaf=False, **kwargs)
