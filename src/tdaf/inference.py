"""The inference form of a model: every BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, ``y * a + b`` with
``a = gamma / sqrt(var + eps)`` and ``b = beta - mean * a``; after a convolution it can be
folded into the convolution's weight (scaled by ``a`` per output channel: dim 0 of a
``Conv``'s weight, dim 1 of a ``ConvTranspose``'s ``(in, out / groups, *k)`` weight) and
bias, which saves a pass over every normalised map. :func:`fold_batchnorm` does it for
every task's models, plain and TDAF:

* plain BatchNorm (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, torchvision's
  ``FrozenBatchNorm2d``), and MFBN whose flows that reach it share one set of statistics
  (a one-flow model, a stage only the last flow runs): one folded convolution of the
  same class, ``nn.Identity`` in place of the norm;
* MFBN (:class:`~tdaf.layers.MultiFlowBatchNorm`, its frozen and synchronised forms) after
  a convolution that several flows run with their own statistics: one fold per flow, in a
  :class:`FlowFoldedConv`, whose flow R2DNS sets as it set the MFBN's
  (:class:`~tdaf.layers.mfbn.FlowIndexed`). The ANARs' convolutions (each ANAR runs in one
  or two flows) get a folded copy per flow. The backbone's shared convolutions get, by
  default (``shared="rescale"``), one folded weight, the last flow's, and for each
  earlier flow a per-channel scale and shift applied after it in one fused op
  (``addcmul``): ``BN_f(conv(x)) = r_f * conv_N(x) + c_f`` with
  ``r_f = sqrt((var_N + eps) / (var_f + eps))`` (no division by gamma: exact where gamma
  is 0) and ``c_f = b_f - r_f * b_N``.

Why the backbone rescales rather than copies (``shared="copies"``: a folded weight per
flow). Copies run every flow as a bare convolution, but hold one weight per flow that runs
the stage (stages 1..L-1 repeated): measured at the paper's three flows, in parameters
(weights and biases) of the folded model against the unfolded one, ``copies`` holds
15.17M against 11.71M for tdaf_resnet18 (1.30x), 35.82M against 25.82M for
tdaf_resnet50 (1.39x), 22.58M against 19.12M for tdaf_fcos_resnet18_fpn (1.18x), 20.65M
against 15.40M for tdaf_simplebaseline_resnet18 (1.34x) and 43.95M against 33.56M for
tdaf_r3d_resnet18 (1.31x); ``rescale`` holds 1.000x-1.002x (the BatchNorm parameters go,
the ANARs' per-flow copies and ``2 * C`` numbers per flow and layer come). The speed is
the same: the last flow works on the full-size input and does most of the work (each
earlier flow's input is a quarter of the next's in 2D), and it runs its folded convolution
with nothing after it; only the smaller flows' maps get the fused scale-shift. On CPU, one
thread, batch 1 (median of interleaved runs on a shared machine): tdaf_resnet18 at 224x224
74.5 ms unfolded, 70.0 ms ``rescale``, 72.0 ms ``copies``; tdaf_resnet50 at 224x224 176.7,
159.7, 167.4 ms; tdaf_resnet18_cifar at 32x32 26.6, 25.4, 25.2 ms. Equal time for 30-40%
more weights is no trade: the weights must be read from memory on every call (the cost
that dominates at small batch on a GPU) and shipped with an export. ``copies`` stays as an
option.

The graph is read from one forward of every backbone (R2DNS or StageNet) on a small
example input, under a ``TorchFunctionMode`` that counts how often each convolution's
output is read: a norm is folded only where, in every call, its input is the output of
one convolution that nothing else reads (a residual that reads a convolution's output
before its BatchNorm would keep both). Norms outside a backbone are folded where they
follow a convolution in an ``nn.Sequential``. GroupNorm and LayerNorm (torchvision's FCOS
heads) are not BatchNorm and stay: their statistics come from each input. What cannot
be folded (a BatchNorm without running statistics, one after something other than a
convolution of a known kind, a convolution whose output is read twice) stays, with a
warning naming it; :func:`batchnorm_layers` lists what is left.

The folded model computes the same outputs as the model in eval mode to float rounding
(checked on each backbone while folding) and keeps its structure: R2DNS still records
and replaces attention maps (:func:`tdaf.record_attention`). Its state dict is not the
model's (folded weights, no BatchNorm buffers): fold after loading a checkpoint, not
before saving one. Activation checkpointing is turned off in it (an inference form).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode
from torchvision.ops.misc import FrozenBatchNorm2d

from .layers.anar import ANAR, _Deconv
from .layers.mfbn import FLOW_NORMS, FlowIndexed, FrozenMultiFlowBatchNorm, MultiFlowBatchNorm
from .r2dns import R2DNS, StageNet

__all__ = ["fold_batchnorm", "FlowFoldedConv", "batchnorm_layers", "SHARED_FOLDS"]

# How fold_batchnorm folds an MFBN after a backbone convolution that several flows share
# (module docstring): "rescale", one folded weight (the last flow's) and a fused per-channel
# scale-shift for the other flows; "copies", a folded weight per flow.
SHARED_FOLDS: tuple[str, ...] = ("rescale", "copies")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Convolutions whose forward is the plain one (ANAR's transposed conv only picks a kernel):
# a subclass that changes its weight in forward (weight standardisation) cannot be folded.
_CONV_FORWARDS = {cls.forward for cls in _CONVS} | {_Deconv.forward}
_NORMS = (_BatchNorm, FrozenBatchNorm2d, FrozenMultiFlowBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers in ``model``: plain, synchronised, frozen (torchvision's
    ``FrozenBatchNorm2d``) and MFBN in every form. Empty for a fully folded model."""
    return [name for name, m in model.named_modules() if isinstance(m, _NORMS)]


class FlowFoldedConv(FlowIndexed, nn.Module):
    """A convolution with the MFBN after it folded in, per flow.

    ``convs``: folded copies of the convolution (same class and settings); flow ``f`` runs
    ``convs[conv_of_flow[f]]`` and, where ``rescaled[f]``, then ``y * scale[f] + shift[f]``
    per channel (one ``addcmul``). ``flow`` is set by R2DNS before each flow, as an MFBN's.
    A flow that did not reach the convolution while folding (R2DNS's schedule never runs it
    there) rescales too, so every flow stays exact.
    """

    def __init__(self, convs: Sequence[nn.Module], conv_of_flow: Sequence[int], rescaled: Sequence[bool],
                 scale: torch.Tensor, shift: torch.Tensor, flow: int = 0) -> None:
        super().__init__()
        if not (len(conv_of_flow) == len(rescaled) == scale.shape[0] == shift.shape[0]):
            raise ValueError("FlowFoldedConv: conv_of_flow, rescaled, scale and shift need one entry per flow")
        self.convs = nn.ModuleList(convs)
        self.conv_of_flow = tuple(int(i) for i in conv_of_flow)
        self.rescaled = tuple(bool(r) for r in rescaled)
        self.flows = len(self.conv_of_flow)
        self.register_buffer("scale", scale)  # (flows, C)
        self.register_buffer("shift", shift)
        self.flow = flow

    def extra_repr(self) -> str:
        rescaled = [f for f, r in enumerate(self.rescaled) if r]
        return f"flows={self.flows}, conv_of_flow={self.conv_of_flow}, rescaled_flows={rescaled}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.flow
        y = self.convs[self.conv_of_flow[f]](x)
        if self.rescaled[f]:
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = torch.addcmul(self.shift[f].view(shape), y, self.scale[f].view(shape))
        return y


# ------------------------------------------------------------------ norms and convs


def _foldable_conv(m: nn.Module) -> bool:
    return isinstance(m, _CONVS) and type(m).forward in _CONV_FORWARDS


def _norm_rows(m: nn.Module) -> tuple[torch.Tensor, ...] | str:
    """``(gamma, beta, mean, inv_std)`` in float64, ``mean`` and ``inv_std`` with one row per
    flow (one for a plain norm); or why the norm cannot be folded."""
    if isinstance(m, FrozenMultiFlowBatchNorm) or isinstance(m, FrozenBatchNorm2d):
        gamma, beta, mean, var = m.weight, m.bias, m.running_mean, m.running_var
    elif isinstance(m, MultiFlowBatchNorm) or (
            isinstance(m, _BatchNorm) and (type(m).forward is _BatchNorm.forward or isinstance(m, nn.SyncBatchNorm))):
        if not m.track_running_stats or m.running_mean is None or m.running_var is None:
            return "it has no running statistics (it normalises with each batch's)"
        mean, var = m.running_mean, m.running_var
        gamma = m.weight if m.weight is not None else torch.ones_like(mean.reshape(-1, mean.shape[-1])[0])
        beta = m.bias if m.bias is not None else torch.zeros_like(gamma)
    else:
        return f"{type(m).__name__} is a BatchNorm subclass with a forward of its own"
    mean = mean.detach().double().reshape(-1, mean.shape[-1])
    inv = (var.detach().double().reshape(-1, var.shape[-1]) + m.eps).rsqrt()
    return gamma.detach().double(), beta.detach().double(), mean, inv


def _fold(conv: nn.Module, gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor,
          inv: torch.Tensor) -> nn.Module:
    """A copy of ``conv`` computing ``BN(conv(x))`` for one row of statistics."""
    new = copy.deepcopy(conv)
    w = conv.weight.detach().double()
    a = gamma * inv
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(a)
    b = beta + a * (bias - mean)
    ones = (1,) * (w.dim() - 2)
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):  # weight (in, out / groups, *k)
        g = conv.groups
        w = (w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:]) * a.reshape(g, 1, -1, *ones)).reshape(w.shape)
    else:  # weight (out, in / groups, *k)
        w = w * a.reshape(-1, 1, *ones)
    new.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    new.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    return new


def _flow_fold(conv: nn.Module, rows: tuple[torch.Tensor, ...], copies: Sequence[int], flow: int) -> FlowFoldedConv:
    """``conv`` then an MFBN, folded for each of ``copies`` (a folded convolution each); every
    other flow rescales the last of ``copies``'s output."""
    gamma, beta, mean, inv = rows
    primary = copies[-1]
    convs = [_fold(conv, gamma, beta, mean[f], inv[f]) for f in copies]
    n = mean.shape[0]
    a = gamma * inv  # (flows, C)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(gamma)
    b = beta + a * (bias - mean)
    r = inv / inv[primary]  # a_f / a_primary without dividing by gamma
    c = b - r * b[primary]
    rescaled = [f not in copies for f in range(n)]
    for f in copies:
        r[f], c[f] = 1.0, 0.0
    conv_of_flow = [copies.index(f) if f in copies else len(copies) - 1 for f in range(n)]
    dtype = conv.weight.dtype
    return FlowFoldedConv(convs, conv_of_flow, rescaled, r.to(dtype), c.to(dtype), flow=flow)


# ------------------------------------------------------------------ reading the graph


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class _Reads(TorchFunctionMode):
    """Counts, for each watched tensor, the operations that read or write it: those that
    return a tensor or nothing (``__setitem__``); metadata queries such as ``dim()`` or
    ``shape`` do not count."""

    def __init__(self) -> None:
        super().__init__()
        self.count: dict[int, int] = {}

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.count and (out is None or next(_tensors(out), None) is not None):
            for t in _tensors((args, kwargs)):
                if id(t) in self.count:
                    self.count[id(t)] += 1
        return out


class _Pair:
    __slots__ = ("conv", "norm", "flows")

    def __init__(self, conv: nn.Module, norm: nn.Module, flows: list[int]) -> None:
        self.conv, self.norm, self.flows = conv, norm, flows


def _example_input(net: R2DNS | StageNet) -> torch.Tensor:
    ref = next((p for p in net.parameters() if p.is_floating_point()), None)
    chans = net.in_chans
    if chans is None:
        chans = next(m.in_channels for m in net.stages[0].modules() if hasattr(m, "in_channels"))
    size = net.min_input_size()
    x = torch.rand(2, chans, *size, generator=torch.Generator().manual_seed(0))  # 2: a batch-statistics norm runs
    return x.to(device=ref.device, dtype=ref.dtype) if ref is not None else x


def _trace(net: R2DNS | StageNet, x: torch.Tensor) -> tuple[list[_Pair], dict[nn.Module, str], Any]:
    """One forward of ``net`` on ``x``: the (convolution, norm) pairs that can be folded, the
    norms that cannot (with why), and the output."""
    produced: dict[int, nn.Module] = {}
    calls: dict[nn.Module, list[int]] = {}
    norm_calls: dict[nn.Module, list[tuple[int, int]]] = {}
    keep: list[torch.Tensor] = []  # conv outputs stay alive: their ids are unique during the forward
    reads = _Reads()

    def after_conv(m: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            keep.append(out)
            produced[id(out)] = m
            reads.count[id(out)] = 0
            calls.setdefault(m, []).append(id(out))

    def before_norm(m: nn.Module, args: Any) -> None:
        x = args[0] if args else None
        norm_calls.setdefault(m, []).append((id(x), m.flow if isinstance(m, FLOW_NORMS) else 0))

    handles = []
    for m in net.modules():
        if isinstance(m, _CONVS):
            handles.append(m.register_forward_hook(after_conv))
        elif isinstance(m, _NORMS):
            handles.append(m.register_forward_pre_hook(before_norm))
    overlap = getattr(net, "overlap", False)
    try:
        if isinstance(net, R2DNS):
            net.overlap = False
        with torch.no_grad(), reads:
            out = net(x)
    finally:
        for h in handles:
            h.remove()
        if isinstance(net, R2DNS):
            net.overlap = overlap
    returned = {id(t) for t in _tensors(out)}
    pairs, left = [], {}
    for norm, seen in norm_calls.items():
        rows = _norm_rows(norm)
        sources = {produced.get(i) for i, _ in seen}
        conv = next(iter(sources))
        if isinstance(rows, str):
            left[norm] = rows
        elif len(sources) != 1 or conv is None:
            left[norm] = "its input is not always the output of one convolution"
        elif not _foldable_conv(conv):
            left[norm] = f"the {type(conv).__name__} before it has a forward of its own"
        elif (set(calls[conv]) != {i for i, _ in seen} or len(seen) != len(calls[conv])
              or any(reads.count[i] != 1 or i in returned for i in calls[conv])):
            left[norm] = "the output of the convolution before it is also read elsewhere"
        else:
            pairs.append(_Pair(conv, norm, sorted({f for _, f in seen})))
    return pairs, left, out


def _sequential_pairs(model: nn.Module, skip: set[int], uses: dict[int, int]) -> list[_Pair]:
    """(conv, norm) neighbours in a plain ``nn.Sequential`` outside the traced backbones."""
    pairs = []
    for m in model.modules():
        if id(m) in skip or not isinstance(m, nn.Sequential) or type(m).forward is not nn.Sequential.forward:
            continue
        kids = list(m)
        for conv, norm in zip(kids, kids[1:]):
            if not (_foldable_conv(conv) and isinstance(norm, _NORMS)) or uses[id(conv)] != 1 or uses[id(norm)] != 1:
                continue
            rows = _norm_rows(norm)
            if isinstance(rows, str) or not (rows[2] == rows[2][0]).all() or not (rows[3] == rows[3][0]).all():
                continue  # an MFBN outside R2DNS: no flow is ever set, keep it as it is
            pairs.append(_Pair(conv, norm, [0]))
    return pairs


# ------------------------------------------------------------------ the API


def fold_batchnorm(model: nn.Module, shared: str = "rescale") -> nn.Module:
    """The inference form of ``model`` (in eval mode): a new model with every BatchNorm,
    MFBN included, folded into the convolution before it (module docstring). ``model`` is
    left as it is.

    ``shared``: how an MFBN after a backbone convolution that several flows run with their
    own statistics is folded: ``"rescale"`` (one folded weight, a fused per-channel
    scale-shift for the earlier flows; the default, chosen for its memory: module
    docstring) or ``"copies"`` (a folded weight per flow). The ANARs' convolutions are
    folded per flow either way.

    The result gives the model's eval-mode outputs to float rounding; a BatchNorm that
    cannot be folded stays, with a warning (:func:`batchnorm_layers` lists what is left).
    Raises ValueError for a model in training mode.
    """
    if shared not in SHARED_FOLDS:
        raise ValueError(f"shared: got {shared!r}; allowed: {', '.join(SHARED_FOLDS)}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"fold_batchnorm: the model is in training mode ({training[0]} and {len(training) - 1} other modules); "
            f"call model.eval() first: folding uses the running statistics, which only eval mode normalises with"
        )
    folded = copy.deepcopy(model)
    if getattr(folded, "grad_checkpointing", False) and hasattr(folded, "set_grad_checkpointing"):
        folded.set_grad_checkpointing(False)
    names = {id(m): name for name, m in folded.named_modules()}
    uses: dict[int, int] = {}
    for _, m in folded.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    nets = [m for m in folded.modules() if isinstance(m, (R2DNS, StageNet))]
    inside = {id(sub) for net in nets for sub in net.modules() if sub is not net}
    nets = [net for net in nets if id(net) not in inside]  # the outermost backbones
    traced = {id(sub) for net in nets for sub in net.modules()}
    replace: dict[int, nn.Module] = {}
    left: dict[nn.Module, str] = {}
    checks = []
    for net in nets:
        anar_parts = {id(sub) for g in net.modules() if isinstance(g, ANAR) for sub in g.modules()}
        x = _example_input(net)
        pairs, net_left, out = _trace(net, x)
        left.update(net_left)
        checks.append((net, x, out))
        for pair in pairs:
            replace[id(pair.conv)] = _replacement(pair, shared, id(pair.conv) in anar_parts)
            replace[id(pair.norm)] = nn.Identity()
    for pair in _sequential_pairs(folded, traced, uses):
        replace[id(pair.conv)] = _replacement(pair, shared, False)
        replace[id(pair.norm)] = nn.Identity()
    for m in list(folded.modules()):
        for key, child in list(m._modules.items()):
            if child is not None and id(child) in replace:
                m._modules[key] = replace[id(child)]
    for net, x, out in checks:
        _check_same(net, x, out, names.get(id(net), ""))
    remaining = {id(m) for m in folded.modules()}
    reasons = {names[id(m)]: why for m, why in left.items() if id(m) in remaining}
    unreached = [n for n in batchnorm_layers(folded) if n not in reasons]
    if reasons or unreached:
        parts = [f"{n} ({why})" for n, why in reasons.items()]
        parts += [f"{n} (not after a convolution in a backbone's forward or an nn.Sequential)" for n in unreached]
        warnings.warn(f"fold_batchnorm: {len(parts)} BatchNorm layer(s) left as they are: " + "; ".join(parts),
                      stacklevel=2)
    return folded


def _replacement(pair: _Pair, shared: str, in_anar: bool) -> nn.Module:
    rows = _norm_rows(pair.norm)
    assert not isinstance(rows, str)
    gamma, beta, mean, inv = rows
    used = pair.flows
    if all(torch.equal(mean[f], mean[used[0]]) and torch.equal(inv[f], inv[used[0]]) for f in used):
        return _fold(pair.conv, gamma, beta, mean[used[0]], inv[used[0]])
    copies = used if in_anar or shared == "copies" else [used[-1]]
    return _flow_fold(pair.conv, rows, copies, flow=getattr(pair.norm, "flow", 0))


def _check_same(net: nn.Module, x: torch.Tensor, expected: Any, name: str) -> None:
    """The folded backbone's output on the traced input against the model's (a wrong reading
    of the graph shows as a difference far above float rounding). Where the model's own
    output is not finite (a checkpoint of NaN weights) there is nothing to compare."""
    with torch.no_grad():
        got = net(x)
    for a, b in zip(_tensors(got), _tensors(expected)):
        if a.dtype not in (torch.float32, torch.float64) or a.numel() == 0:
            continue
        if a.shape != b.shape:
            error, scale = float("inf"), 1.0
        else:
            finite = torch.isfinite(b)
            if not finite.any():
                continue
            error = float("inf") if not torch.isfinite(a[finite]).all() else (a - b)[finite].abs().max().item()
            scale = b[finite].abs().max().item()
        if not error <= 1e-3 * max(scale, 1e-6):
            raise RuntimeError(f"fold_batchnorm: the folded backbone {name or type(net).__name__} does not compute "
                               f"what the model computes (max difference {error:.3g}); please report this model")
