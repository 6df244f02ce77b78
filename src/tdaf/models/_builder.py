"""Pieces every model family shares: the staged backbone (plain or TDAF) and the
registration of a family's plain / ``tdaf_`` / ``_cifar`` variants."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..r2dns import R2DNS, StageNet, Stride
from ._registry import register_model

__all__ = ["staged_backbone", "tdaf_settings", "register_variants"]


def staged_backbone(
    stages: Sequence[nn.Module],
    channels: Sequence[int],
    strides: Sequence[Stride],
    *,
    tdaf: bool,
    flows: int,
    anar: str,
    eta: float,
    downsample: str,
    depthwise: bool = False,
    in_chans: int | None = 3,
) -> R2DNS | StageNet:
    """R2DNS over ``stages`` for a TDAF model, the plain :class:`StageNet` otherwise:
    one code path for both, so ``flows=1`` TDAF and plain models share their weights' layout."""
    if tdaf:
        return R2DNS(stages, channels, strides, flows=flows, anar=anar, eta=eta, downsample=downsample,
                     depthwise=depthwise, in_chans=in_chans)
    return StageNet(stages, channels, strides, in_chans=in_chans)


def tdaf_settings(backbone: R2DNS | StageNet) -> dict[str, Any]:
    """The TDAF settings to record in a model's ``pretrained_cfg`` (none for a plain model)."""
    if not isinstance(backbone, R2DNS):
        return {}
    return dict(flows=backbone.flows, anar=backbone.anar_name, eta=backbone.eta, downsample=backbone.down.mode)


def register_variants(
    arch: str,
    create: Callable[..., nn.Module],
    cfg: Callable[..., dict[str, Any]],
    title: str,
    cifar_variants: bool = True,
) -> None:
    """Register ``arch``, ``tdaf_arch`` and (with ``cifar_variants``) their ``_cifar``
    forms, each built by ``create(arch, tdaf=..., cifar=..., **kwargs)`` with config
    ``cfg(cifar, tdaf=..., arch=...)``; ``title`` names the network in docstrings."""
    for cifar in (False, True) if cifar_variants else (False,):
        for tdaf in (False, True):
            name = f"{'tdaf_' if tdaf else ''}{arch}{'_cifar' if cifar else ''}"

            def builder(_tdaf: bool = tdaf, _cifar: bool = cifar, **kwargs: Any) -> nn.Module:
                return create(arch, tdaf=_tdaf, cifar=_cifar, **kwargs)

            builder.__name__ = builder.__qualname__ = name
            builder.__doc__ = f"{'TDAF-' if tdaf else ''}{title}{' for 32x32 (CIFAR) input' if cifar else ''}."
            config = cfg(cifar, tdaf=tdaf, arch=arch)
            config["baseline" if tdaf else "tdaf_variant"] = name.removeprefix("tdaf_") if tdaf else "tdaf_" + name
            register_model(config)(builder)
