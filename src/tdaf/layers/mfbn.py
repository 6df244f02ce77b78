"""Multi-Flow Batch Normalization (MFBN), paper §3.1, Eq. 4.

All flows of R2DNS share the BatchNorm affine parameters (gamma, alpha), but each flow
normalises with its own batch statistics and keeps its own running mean / variance:
the flows see inputs of different scales, and the later flows are masked by attention,
so one set of statistics for all of them is wrong (a shared BN costs ~6 points on
digits for TDAF-ResNet-18).

MFBN is a ``torch.nn.modules.batchnorm._BatchNorm`` (and, for ``dims=2``, an
``nn.BatchNorm2d``; ``dims=1``/``3``: ``BatchNorm1d``/``3d``), so code that finds BatchNorm
layers by type sees it: ``norm_eval`` loops (``m.eval()`` on every ``_BatchNorm``), weight
decay filters, the freezing and synchronising converters. Converters that copy a layer
into a one-statistics BatchNorm (``nn.SyncBatchNorm.convert_sync_batchnorm``,
``timm.layers.freeze_batch_norm_2d``) cannot keep per-flow statistics: the copy fails at
its first forward (its ``(flows, C)`` statistics do not fit ``C`` channels) rather than
silently using one set for every flow. Use
:func:`convert_sync_batchnorm` and :func:`freeze_mfbn` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.distributed as dist
from timm.layers import convert_sync_batchnorm as timm_convert_sync_batchnorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops.misc import FrozenBatchNorm2d

from .tracing import is_eager

__all__ = [
    "MultiFlowBatchNorm", "SyncMultiFlowBatchNorm", "FrozenMultiFlowBatchNorm", "convert_to_mfbn", "freeze_mfbn",
    "convert_sync_batchnorm", "set_flow", "mfbn_modules", "FlowIndexed",
]

_INPUT_DIMS = {1: (2, 3), 2: (4,), 3: (5,)}


def _check_dims(x: torch.Tensor, dims: int) -> None:
    if x.dim() not in _INPUT_DIMS[dims]:
        raise ValueError(
            f"MultiFlowBatchNorm(dims={dims}) expects a {' or '.join(map(str, _INPUT_DIMS[dims]))}-D "
            f"input, got {x.dim()}-D"
        )


# A leaf for torch.fx, so models with MFBN can be symbolically traced.
torch.fx.wrap("_check_dims")


def _per_flow_statistics(state_dict: dict[str, Any], prefix: str, flows: int) -> None:
    """A plain BatchNorm's running mean / variance (shape (C,)) copied into every flow's row,
    so pretrained files and plain checkpoints load into per-flow statistics."""
    for name in ("running_mean", "running_var"):
        value = state_dict.get(prefix + name)
        if value is not None and value.dim() == 1:
            state_dict[prefix + name] = value.unsqueeze(0).expand(flows, -1).clone()


class MultiFlowBatchNorm(_BatchNorm):
    """BatchNorm over 1d/2d/3d inputs with shared affine and per-flow statistics (Eq. 4).

    An instance is of the subclass matching ``dims`` (``MultiFlowBatchNorm2d``, also an
    ``nn.BatchNorm2d``, for ``dims=2``), so type-based BatchNorm tools see it.

    The running buffers are stacked per flow: ``running_mean`` and ``running_var`` have
    shape ``(flows, C)`` and ``num_batches_tracked`` shape ``(flows,)``. ``flow`` (a
    0-based index) selects the statistics; the R2DNS wrapper sets it before each flow.
    A plain BatchNorm state dict (``running_mean`` of shape ``(C,)``) loads into every
    flow's buffers, so pretrained backbones keep their statistics.
    """

    # The state-dict version of the layer before it was a _BatchNorm (its loader below
    # bypasses _NormBase's version upgrade: MFBN files always hold the batch counters).
    _version = 1
    _by_dims: dict[int, type[MultiFlowBatchNorm]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> MultiFlowBatchNorm:
        # MultiFlowBatchNorm(..., dims=d) gives the dims-specific subclass; a subclass (and
        # unpickling, which calls __new__ with no arguments) gets itself.
        target = cls
        if "_by_dims" in cls.__dict__ and (args or kwargs):
            dims = kwargs.get("dims", args[6] if len(args) > 6 else 2)
            target = cls._by_dims.get(dims, cls)
        return super().__new__(target)

    def __init__(
        self,
        num_features: int,
        flows: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dims: int = 2,
    ) -> None:
        nn.Module.__init__(self)  # not _NormBase's: it would register (C,)-shaped statistics
        if flows < 1:
            raise ValueError(f"flows must be >= 1, got {flows}")
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        self.num_features = num_features
        self.flows = flows
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.dims = dims
        self.flow = 0
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(flows, num_features))
            self.register_buffer("running_var", torch.ones(flows, num_features))
            self.register_buffer("num_batches_tracked", torch.zeros(flows, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, flows={self.flows}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )

    def _check_input_dim(self, input: torch.Tensor) -> None:
        _check_dims(input, self.dims)

    def _flow_statistics(self, flow: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow ``flow``'s rows of the running statistics, as views (in-place updates of
        the buffers show through). Cached while the buffers stay the same tensors: a
        row lookup is two indexing calls, a measurable share of a small eval forward."""
        mean, var = self.running_mean, self.running_var
        cache = self.__dict__.get("_rows")
        if cache is None or cache[0] is not mean or cache[1] is not var or cache[2] != mean.data_ptr():
            cache = (mean, var, mean.data_ptr(), [(mean[f], var[f]) for f in range(mean.shape[0])])
            self.__dict__["_rows"] = cache
        return cache[3][flow]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_rows", None)  # views: rebuilt on first use (not pickled or deep-copied)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_dims(x, self.dims)
        flow = self.flow
        if not self.training and self.track_running_stats and is_eager():
            # (Not when tracing: a traced graph must read the buffers, not views taken before.)
            # Inference: normalise with flow ``flow``'s running statistics, nothing updates.
            mean, var = self._flow_statistics(flow)
            return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
        momentum = 0.0 if self.momentum is None else self.momentum
        running_mean = running_var = None
        if self.track_running_stats:
            running_mean = self.running_mean[flow]  # a view: F.batch_norm updates it in place
            running_var = self.running_var[flow]
            if self.training:
                self.num_batches_tracked[flow] += 1
                if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
                    momentum = 1.0 / float(self.num_batches_tracked[flow])
        use_batch_stats = self.training or not self.track_running_stats
        return F.batch_norm(
            x, running_mean, running_var, self.weight, self.bias, use_batch_stats, momentum, self.eps
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A plain BatchNorm's buffers (shape (C,), scalar count) fill every flow.
        if self.running_mean is not None:
            _per_flow_statistics(state_dict, prefix, self.flows)
        key = prefix + "num_batches_tracked"
        value = state_dict.get(key)
        if value is not None and value.dim() == 0 and self.num_batches_tracked is not None:
            state_dict[key] = value.expand(self.flows).clone()
        nn.Module._load_from_state_dict(  # not _NormBase's (see _version)
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class SyncMultiFlowBatchNorm(MultiFlowBatchNorm):
    """MFBN whose training-time batch statistics are computed over every process of
    ``process_group`` (default: the whole world), per flow: the flow-``n`` statistics of
    all processes are reduced together, never mixed with another flow's. As
    ``nn.SyncBatchNorm``, it is plain MFBN outside training, in eval mode, or without an
    initialised process group of more than one process. Same parameters, buffers and
    state dict as :class:`MultiFlowBatchNorm`. Works with every ``torch.distributed``
    backend (an all-reduce of per-channel sums; gradients flow through it).
    """

    def __init__(
        self,
        num_features: int,
        flows: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dims: int = 2,
        process_group: Any = None,
    ) -> None:
        super().__init__(num_features, flows, eps, momentum, affine, track_running_stats, dims)
        self.process_group = process_group

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self._world_size() == 1:
            return super().forward(x)
        _check_dims(x, self.dims)
        flow = self.flow
        reduce_dims = [0] + list(range(2, x.dim()))
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(reduce_dims), (x * x).sum(reduce_dims), count])
        # Differentiable all-reduce: the backward sums the gradients of every process's sums.
        stats = torch.distributed.nn.functional.all_reduce(stats, group=self.process_group or dist.group.WORLD)
        c = x.shape[1]
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked[flow] += 1
                momentum = 1.0 / float(self.num_batches_tracked[flow]) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean[flow].mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var[flow].mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * (var + self.eps).rsqrt().reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def _dims_classes(base: type[MultiFlowBatchNorm]) -> None:
    # One subclass per input rank, also a BatchNorm1d/2d/3d: tools that look for
    # nn.BatchNorm2d (timm's freeze_batch_norm_2d, detectron2's freezer) find 2d MFBN.
    for dims, bn in ((1, nn.BatchNorm1d), (2, nn.BatchNorm2d), (3, nn.BatchNorm3d)):
        name = f"{base.__name__}{dims}d"
        cls = type(name, (base, bn), {"__module__": __name__, "__qualname__": name,
                                      "__doc__": f"{base.__name__} over {dims}d inputs (see {base.__name__})."})
        globals()[name] = cls
        base._by_dims[dims] = cls


MultiFlowBatchNorm._by_dims = {}
SyncMultiFlowBatchNorm._by_dims = {}
_dims_classes(MultiFlowBatchNorm)
_dims_classes(SyncMultiFlowBatchNorm)


class FrozenMultiFlowBatchNorm(nn.Module):
    """MFBN with frozen statistics and affine (Eq. 4 at inference), the per-flow
    counterpart of torchvision's ``FrozenBatchNorm2d``, which its detection builders put in
    pretrained backbones: always normalises with flow ``flow``'s running statistics, in
    train mode too, and nothing is trainable (``weight``/``bias`` are buffers).

    Buffers: ``weight``, ``bias`` ``(C,)``; ``running_mean``, ``running_var`` ``(flows, C)``.
    Loads an MFBN state dict (its batch counters are dropped) or a plain BatchNorm /
    FrozenBatchNorm2d one (statistics copied into every flow).
    """

    def __init__(self, num_features: int, flows: int, eps: float = 1e-5, dims: int = 2) -> None:
        super().__init__()
        if flows < 1:
            raise ValueError(f"flows must be >= 1, got {flows}")
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        self.num_features = num_features
        self.flows = flows
        self.eps = eps
        self.dims = dims
        self.flow = 0
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(flows, num_features))
        self.register_buffer("running_var", torch.ones(flows, num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, flows={self.flows}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_dims(x, self.dims)
        # As FrozenBatchNorm2d: a scale and shift, so it is exact in train and eval mode alike.
        scale = self.weight * (self.running_var[self.flow] + self.eps).rsqrt()
        shift = self.bias - self.running_mean[self.flow] * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(shape) + shift.reshape(shape)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # statistics no longer change
        _per_flow_statistics(state_dict, prefix, self.flows)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


FLOW_NORMS = (MultiFlowBatchNorm, FrozenMultiFlowBatchNorm)


class FlowIndexed:
    """Mixin for a layer other than MFBN whose forward depends on the flow being run, read
    from its ``flow`` attribute (0-based): :func:`mfbn_modules` lists it, so R2DNS points it
    at each flow with the MFBNs (the per-flow folded convolutions of :mod:`tdaf.inference`)."""

    flow: int = 0


_FLOW_INDEXED = FLOW_NORMS + (FlowIndexed,)


_BN_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}


def _bn_dims(module: nn.Module) -> int | None:
    for cls, dims in _BN_DIMS.items():
        if isinstance(module, cls):
            return dims
    return None


def convert_to_mfbn(module: nn.Module, flows: int) -> nn.Module:
    """Replace every ``nn.BatchNorm{1,2,3}d`` in ``module`` by :class:`MultiFlowBatchNorm`
    and every torchvision ``FrozenBatchNorm2d`` by :class:`FrozenMultiFlowBatchNorm`.

    Affine parameters are copied once (shared); running statistics are copied into every
    flow. Returns the converted module (``module`` itself unless it is a BatchNorm).
    Modules that already are MFBN are left alone (their flow count must match).
    """
    if isinstance(module, FLOW_NORMS):
        if module.flows != flows:
            raise ValueError(f"MFBN already has flows={module.flows}, cannot convert to flows={flows}")
        return module
    if isinstance(module, FrozenBatchNorm2d):
        frozen = FrozenMultiFlowBatchNorm(module.weight.numel(), flows, eps=module.eps, dims=2)
        frozen = frozen.to(device=module.weight.device, dtype=module.weight.dtype)
        frozen.load_state_dict(module.state_dict())
        return frozen
    dims = _bn_dims(module)
    if dims is not None:
        bn: nn.modules.batchnorm._BatchNorm = module  # type: ignore[assignment]
        new = MultiFlowBatchNorm(
            bn.num_features, flows, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
            track_running_stats=bn.track_running_stats, dims=dims,
        )
        ref = bn.weight if bn.weight is not None else bn.running_mean
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if bn.affine:
                new.weight.copy_(bn.weight)
                new.bias.copy_(bn.bias)
                new.weight.requires_grad_(bn.weight.requires_grad)
                new.bias.requires_grad_(bn.bias.requires_grad)
            if bn.track_running_stats:
                new.running_mean.copy_(bn.running_mean.unsqueeze(0).expand(flows, -1))
                new.running_var.copy_(bn.running_var.unsqueeze(0).expand(flows, -1))
                new.num_batches_tracked.copy_(bn.num_batches_tracked.expand(flows))  # no .item(): works on meta tensors
        new.train(bn.training)
        return new
    for name, child in module.named_children():
        converted = convert_to_mfbn(child, flows)
        if converted is not child:
            setattr(module, name, converted)
    return module


def freeze_mfbn(module: nn.Module) -> nn.Module:
    """Replace every :class:`MultiFlowBatchNorm` in ``module`` by a
    :class:`FrozenMultiFlowBatchNorm` holding its affine and per-flow statistics (what
    torchvision's detection builders do with ``FrozenBatchNorm2d`` for a pretrained
    backbone). Returns the converted module (``module`` itself unless it is an MFBN)."""
    if isinstance(module, MultiFlowBatchNorm):
        if not module.track_running_stats:
            raise ValueError("freeze_mfbn: an MFBN without running statistics cannot be frozen")
        frozen = FrozenMultiFlowBatchNorm(module.num_features, module.flows, eps=module.eps, dims=module.dims)
        frozen = frozen.to(device=module.running_mean.device, dtype=module.running_mean.dtype)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        frozen.flow = module.flow
        return frozen
    for name, child in module.named_children():
        converted = freeze_mfbn(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def mfbn_modules(module: nn.Module) -> list[MultiFlowBatchNorm | FrozenMultiFlowBatchNorm | FlowIndexed]:
    """Every MFBN (trainable or frozen) inside ``module``, and every other
    :class:`FlowIndexed` layer: the layers whose flow R2DNS sets."""
    return [m for m in module.modules() if isinstance(m, _FLOW_INDEXED)]


def set_flow(modules: Sequence[MultiFlowBatchNorm | FrozenMultiFlowBatchNorm], flow: int) -> None:
    """Point every MFBN in ``modules`` at flow ``flow`` (0-based)."""
    for m in modules:
        m.flow = flow


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` for TDAF models: every
    :class:`MultiFlowBatchNorm` becomes a :class:`SyncMultiFlowBatchNorm` (per-flow
    statistics, synchronised per flow) and every other BatchNorm an ``nn.SyncBatchNorm``
    (timm's ``BatchNormAct2d`` a ``SyncBatchNormAct``). Parameters and buffers are the
    original tensors (as torch's converter), so the state dict is unchanged. Frozen layers
    stay frozen. Returns the converted module (``module`` itself unless it is a BatchNorm)."""
    if isinstance(module, SyncMultiFlowBatchNorm):
        if process_group is not None:
            module.process_group = process_group
        return module
    if isinstance(module, MultiFlowBatchNorm):
        sync = SyncMultiFlowBatchNorm.__new__(SyncMultiFlowBatchNorm._by_dims[module.dims])
        nn.Module.__init__(sync)
        sync.__dict__.update({k: v for k, v in module.__dict__.items() if not k.startswith("_")})
        for name in ("weight", "bias"):
            sync._parameters[name] = module._parameters[name]
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            sync._buffers[name] = module._buffers[name]
        sync.process_group = process_group
        sync.train(module.training)
        return sync
    if isinstance(module, _BatchNorm):
        return timm_convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module
