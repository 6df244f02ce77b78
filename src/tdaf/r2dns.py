"""Recursive Dual-Directional Nested Structure (R2DNS), paper §3.1, Eqs. 1, 2 and 5.

A backbone given as an ordered list of stages h_1..h_L runs as N weight-sharing
"flows". Flow N sees the input X, flow n sees ``downsample(input of flow n+1)`` (Eq. 2)
and runs only its first S(n) = L - (N - n) stages (Eq. 1). Stage l's output in flow n
is gated by ANAR g_l applied to flow n-1's (gated) output of the same stage, with the
half-scale residual of Eq. 5:

    x_{l+1}^(n) = h_l(x_l^(n)) * (g_l(x_{l+1}^(n-1)) + eta)

and passes through unchanged where flow n-1 has no stage l. Only the last flow's stage
outputs leave ``forward`` (``forward_flows`` gives every flow's). Every BatchNorm inside
(stages and ANARs) becomes MFBN.

Stages may also up-sample (stride ``1/k``: the deconvolution head of SimpleBaseline,
paper §4.3, whose flows all start from the C5 map): flow n-1's stage-l output is still
half the size of flow n's, so ANAR's x2 lines up as for down-sampling stages. With
``anar=None`` the flows run without attention (the multi-scale ablation, §4.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.anar import ANAR, check_anar_options, create_anar
from .layers.downsample import Downsample
from .layers.mfbn import convert_to_mfbn, mfbn_modules, set_flow
from .layers.tracing import is_eager

__all__ = [
    "R2DNS", "StageNet", "overlap_flows", "init_attention", "TDAF_DEFAULTS", "TDAF_ARCH_KEYS", "ATTENTION_INITS",
    "resolve_attention_init", "AttentionMaps", "GateFn", "min_input_size", "check_input",
    "validate_stages", "validate_flows", "validate_strides", "flow_inputs", "stride_fraction", "total_reduction",
]

# The paper's setting (§4): 3 flows, ANAR-3, eta = 0.5 (Eq. 5), 2x2 average pooling between
# flows (Eq. 2). Every builder reads these, so changing a default means changing it here.
# ``anar_min_width`` and ``anar_up`` are this library's options beyond the paper. No ANAR
# layer is narrower than 8 channels (a deviation, docs/deviations.md): Table 1's c/8 and
# c/32 are 1-4 channels on 32-128 channel stages, and on the main job the floor is what made
# the attention find the digit and carry weight (docs/attention-study.md); on ResNet-50 and
# wider (stages of 256+ channels) it changes nothing. Table 1's transposed convs stay.
TDAF_DEFAULTS: dict[str, Any] = dict(flows=3, anar="anar3", eta=0.5, downsample="avg", attention_init="auto",
                                     anar_min_width=8, anar_up="deconv")
# The settings that decide a TDAF network's layout and forward (recorded in its config and
# checkpoints, compared when weights are loaded); ``attention_init`` only decides the start.
TDAF_ARCH_KEYS: tuple[str, ...] = ("flows", "anar", "eta", "downsample", "anar_min_width", "anar_up")

# How the ANARs start (:meth:`R2DNS.init_attention`). "identity": the last conv of every ANAR
# at zero, so each gate is 1 - eta and Eq. 5 multiplies by exactly 1: the network equals its
# plain counterpart at step 0, and attention still learns (its gradient is not zero).
# "random": every ANAR layer Kaiming-initialised (fan-out mode: the one-channel last conv's
# weights have std sqrt(2) at any width, so gates start near 0 or 1 on wide stages).
# "fan_in": every ANAR layer Kaiming fan-in, the last bias at logit(1 - eta): gates start
# around the identity level with a spread of about one logit, every layer learning at once.
# "auto": identity when the model starts from trained weights (a plain network's, which
# attention must not disturb), SCRATCH_ATTENTION_INIT from scratch (chosen by measurement:
# docs/results.md and docs/deviations.md).
ATTENTION_INITS: tuple[str, ...] = ("auto", "identity", "random", "fan_in")
SCRATCH_ATTENTION_INIT = "identity"


def resolve_attention_init(value: str | None, from_trained: bool = False,
                           eta: float = TDAF_DEFAULTS["eta"]) -> str:
    """``"identity"``, ``"random"`` or ``"fan_in"`` for an ``attention_init`` setting (None
    means "auto"; "auto" is "random" where no gate can be the identity: eta 0 or 1)."""
    value = "auto" if value is None else value
    if value not in ATTENTION_INITS:
        raise ValueError(f"attention_init: got {value!r}; allowed: {', '.join(ATTENTION_INITS)}")
    if value == "auto":
        chosen = "identity" if from_trained else SCRATCH_ATTENTION_INIT
        return chosen if 0.0 < eta < 1.0 else "random"
    return value

# A stage's stride: an int >= 1 reduces the size; ``1 / k`` (``0.5``, ``0.25``) up-samples it
# k times (a transposed-conv stage, e.g. SimpleBaseline's pose head); a tuple gives one per dim.
Stride = int | float | tuple[int | float, ...]
# ``maps[(stage, flow)]``: the attention map applied to ``stage``'s output in ``flow`` (1-based).
AttentionMaps = dict[tuple[int, int], torch.Tensor]
# ``fn(stage, flow, g)``: the gate to apply instead of the ANAR's map ``g`` (R2DNS.replace_gates).
GateFn = Callable[[int, int, torch.Tensor], torch.Tensor]


def stride_fraction(stride: int | float | Fraction) -> Fraction:
    """A stride as an exact fraction: an int >= 1, or ``1/k`` for an up-sampling stage."""
    if isinstance(stride, bool):
        raise ValueError(f"stride: got {stride!r}; allowed: an integer >= 1 or 1/k (0.5, 0.25, ...)")
    if isinstance(stride, int) and stride >= 1:
        return Fraction(stride)
    if isinstance(stride, (float, Fraction)) and 0 < stride:
        inverse = 1 / stride
        if stride >= 1 and float(stride).is_integer():
            return Fraction(int(stride))
        if stride < 1 and abs(inverse - round(inverse)) < 1e-9:
            return Fraction(1, round(inverse))
    raise ValueError(f"stride: got {stride!r}; allowed: an integer >= 1 or 1/k (0.5, 0.25, ...) for up-sampling")


def _as_tuple(stride: Stride, dims: int) -> tuple[Fraction, ...]:
    per_dim = (stride,) * dims if isinstance(stride, (int, float, Fraction)) else tuple(stride)
    if len(per_dim) != dims:
        raise ValueError(f"stride: got {stride!r}; a tuple needs one value per spatial dim ({dims})")
    return tuple(stride_fraction(s) for s in per_dim)


def validate_strides(strides: Sequence[Stride], dims: int) -> None:
    for s in strides:
        _as_tuple(s, dims)


def total_reduction(strides: Sequence[Stride], dims: int = 2) -> list[tuple[Fraction, ...]]:
    """Cumulative reduction after each stage, per spatial dim (a fraction below 1 after up-sampling)."""
    out, acc = [], (Fraction(1),) * dims
    for s in strides:
        acc = tuple(a * b for a, b in zip(acc, _as_tuple(s, dims)))
        out.append(acc)
    return out


def min_input_size(strides: Sequence[Stride], flows: int, dims: int = 2) -> tuple[int, ...]:
    """Smallest input, per spatial dim, at which every flow's input is at least the
    total stride of the stages that flow runs (inputs halve with rounding up).

    With up-sampling stages (stride ``1/k``) the requirement is the largest reduction
    reached at any stage the flow runs (at least 1: every map keeps one pixel)."""
    num_stages = len(strides)
    cumulative = total_reduction(strides, dims)
    sizes = []
    for d in range(dims):
        need = 1
        for n in range(1, flows + 1):
            halvings = flows - n
            runs = num_stages - halvings
            total = max([Fraction(1)] + [cumulative[i][d] for i in range(runs)])
            total = math.ceil(total)
            # ceil(X / 2**k) >= total  <=>  X >= (total - 1) * 2**k + 1
            need = max(need, (total - 1) * 2**halvings + 1)
        sizes.append(need)
    return tuple(sizes)


def check_input(x: torch.Tensor, in_chans: int | None, min_size: tuple[int, ...], dims: int) -> None:
    """Raise ValueError for an input a staged backbone cannot take."""
    if not is_eager():
        return
    if x.dim() != dims + 2:
        layout = "(B, C, H, W)" if dims == 2 else "(B, C, T, H, W)"
        raise ValueError(f"input: expected a {dims + 2}-D tensor {layout}, got shape {tuple(x.shape)}")
    if in_chans is not None and x.shape[1] != in_chans:
        raise ValueError(f"input: expected {in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    size = tuple(x.shape[2:])
    if any(s < m for s, m in zip(size, min_size)):
        raise ValueError(
            f"input: spatial size {'x'.join(map(str, size))} is below the minimum "
            f"{'x'.join(map(str, min_size))} for this model (every flow's input must be at least the "
            f"total stride of the stages it runs)"
        )


torch.fx.wrap("check_input")


def _check_stage_output(y: torch.Tensor, expected: int, stage: int) -> None:
    if is_eager() and y.shape[1] != expected:
        raise ValueError(
            f"stage {stage}: declared {expected} output channels, but the stage produced {y.shape[1]}"
        )


torch.fx.wrap("_check_stage_output")


class StageNet(nn.Module):
    """The plain backbone as stages: runs h_1..h_L once and returns every stage output."""

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int], strides: Sequence[Stride],
                 dims: int = 2, in_chans: int | None = 3) -> None:
        super().__init__()
        validate_stages(stages, channels, strides, dims)
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.strides = list(strides)
        self.dims = dims
        self.in_chans = in_chans
        self.flows = 1

    def min_input_size(self) -> tuple[int, ...]:
        return min_input_size(self.strides, 1, self.dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_chans, self.min_input_size(), self.dims)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def validate_stages(stages: Sequence[nn.Module], channels: Sequence[int], strides: Sequence[Stride],
                    dims: int = 2) -> None:
    if len(stages) == 0:
        raise ValueError("stages: need at least one stage")
    if len(channels) != len(stages) or len(strides) != len(stages):
        raise ValueError(
            f"stages: got {len(stages)} stages but {len(channels)} channel counts and {len(strides)} strides"
        )
    validate_strides(strides, dims)


def validate_flows(flows: int, num_stages: int) -> None:
    if not isinstance(flows, int) or isinstance(flows, bool) or not 1 <= flows <= num_stages:
        raise ValueError(
            f"flows: got {flows!r}; allowed: an integer from 1 to the number of stages ({num_stages})"
        )


def flow_inputs(x: torch.Tensor, down: nn.Module, flows: int) -> list[torch.Tensor]:
    """Eq. 2: the inputs of flows 1..N, flow N's being ``x`` and each earlier one ``down``
    of the next."""
    inputs = [x]
    for _ in range(flows - 1):
        inputs.append(down(inputs[-1]))
    inputs.reverse()
    return inputs


class _Gated:
    """A gated map ``y * s`` kept for the backward pass as its two factors; computed again
    on first use there and shared by every layer that saved it (the first block's conv and
    its shortcut both do)."""

    __slots__ = ("y", "s", "z")

    def __init__(self, y: torch.Tensor, s: torch.Tensor) -> None:
        self.y, self.s = y, s
        self.z: torch.Tensor | None = None

    def value(self) -> torch.Tensor:
        if self.z is None:
            self.z = self.y * self.s
        return self.z


def _unpack_gated(saved: Any) -> torch.Tensor:
    return saved.value() if isinstance(saved, _Gated) else saved


class _RecomputeGated:
    """Saved-tensor hooks under which a gated map ``z = y * (a + eta)`` (Eq. 5) that a later
    layer saves for its backward pass is stored as ``(y, a + eta)`` and recomputed there.

    ``y`` (the stage output) is kept anyway by the stage's own last layer (a ReLU keeps its
    output) and ``a + eta`` has one channel, so a gated map then costs no memory of its own:
    without this every gated map would be held twice, as ``y`` and as ``z`` (+0.07x of
    ResNet-50's training activations). The recomputation is the same multiplication, so
    the gradients are bit-identical."""

    def __init__(self) -> None:
        self.maps: dict[int, tuple[torch.Size, tuple[int, ...], _Gated]] = {}

    @staticmethod
    def applicable() -> bool:
        # Not under someone else's saved-tensor hooks (checkpointing, CPU offload, a memory
        # probe): hooks do not nest, ours would replace theirs.
        if not (torch.is_grad_enabled() and is_eager()):
            return False
        top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
        return top is not None and top(False) is None

    def add(self, z: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> None:
        self.maps[z.data_ptr()] = (z.shape, z.stride(), _Gated(y, s))

    def pack(self, t: torch.Tensor) -> Any:
        entry = self.maps.get(t.data_ptr())
        if entry is not None and t.shape == entry[0] and t.stride() == entry[1]:
            return entry[2]
        return t

    def hooks(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, _unpack_gated)


class R2DNS(nn.Module):
    """R2DNS over a staged backbone (paper Fig. 2b, Eqs. 1, 2, 5).

    Args:
        stages: the backbone's stages h_1..h_L, in order.
        channels: output channels of each stage (ANAR g_l reads stage l's output).
        strides: each stage's size reduction: an int >= 1, ``1/k`` (``0.5``) for a stage
            that up-samples k times (a transposed-conv head), or a tuple per dim for video.
        flows: N, the number of flows (1 <= N <= L). N = 1 is the plain backbone.
        anar: ANAR variant, ``"anar2" | "anar3" | "anar5" | "anar7"``; ``None`` runs the
            flows without attention (the multi-scale ablation of §4.5: independent flows).
        eta: the half-scale residual of Eq. 5.
        downsample: DSF between flows, ``"avg"`` or ``"bilinear"``.
        dims: 2 for images, 3 for video (3D ANAR, DSF over T, H and W).
        depthwise: depthwise-separable ANAR (MobileNet).
        in_chans: expected input channels (checked), or None.
        attention_init: how the ANARs start: ``"identity"`` (the network equals its plain
            counterpart at step 0), ``"random"``, ``"fan_in"`` or ``"auto"`` (from scratch:
            :data:`SCRATCH_ATTENTION_INIT`; builders that load trained weights pass
            ``"identity"``). See :meth:`init_attention`.
        anar_min_width: the narrowest ANAR layer (default 8; 1: Table 1's widths exactly,
            which are 1-4 channels on narrow backbones).
        anar_up: ANAR's up layers: ``"deconv"`` (Table 1) or ``"resize"`` (x2 resize + 3x3 conv).

    Defaults are :data:`TDAF_DEFAULTS`. ``forward`` returns the last flow's stage outputs
    ``[x_2^(N), ..., x_{L+1}^(N)]``; :meth:`forward_flows` returns every flow's.
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        channels: Sequence[int],
        strides: Sequence[Stride],
        flows: int = TDAF_DEFAULTS["flows"],
        anar: str | None = TDAF_DEFAULTS["anar"],
        eta: float = TDAF_DEFAULTS["eta"],
        downsample: str = TDAF_DEFAULTS["downsample"],
        dims: int = 2,
        depthwise: bool = False,
        in_chans: int | None = 3,
        attention_init: str = TDAF_DEFAULTS["attention_init"],
        anar_min_width: int = TDAF_DEFAULTS["anar_min_width"],
        anar_up: str = TDAF_DEFAULTS["anar_up"],
    ) -> None:
        super().__init__()
        validate_stages(stages, channels, strides, dims)
        num_stages = len(stages)
        validate_flows(flows, num_stages)
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and 0.0 <= eta <= 1.0):
            raise ValueError(f"eta: got {eta!r}; allowed: a number in [0, 1] (paper: 0.5)")
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.strides = list(strides)
        self.flows = flows
        self.eta = float(eta)
        self.dims = dims
        self.in_chans = in_chans
        self.anar_name = anar
        self.down = Downsample(downsample, dims)
        # g_l exists where some flow n-1 runs stage l: l <= S(N-1) = L-1 (none when N = 1).
        num_attention = num_stages - 1 if flows > 1 and anar is not None else 0
        check_anar_options(anar_min_width, anar_up)
        self.anar_min_width, self.anar_up = anar_min_width, anar_up
        self.attention = nn.ModuleList(
            [create_anar(anar, channels[l], dims=dims, depthwise=depthwise, min_width=anar_min_width, up=anar_up)
             for l in range(num_attention)]
        )
        if flows == 1 and anar is not None:
            create_anar(anar, 8)  # still validate the name
        self.init_attention(resolve_attention_init(attention_init, eta=self.eta))
        convert_to_mfbn(self, flows)
        self._mode = "bilinear" if dims == 2 else "trilinear"
        self._attention_maps: AttentionMaps | None = None
        self._gate_fn: GateFn | None = None  # replace_gates
        self._flow_outputs: list[list[torch.Tensor]] | None = None  # record_flows
        # On a CUDA device, run flows 1..N-1 (and the ANARs that gate flow N) on a second
        # stream, concurrently with flow N (see forward_flows). Off by default.
        self.overlap = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_side_streams", None)  # CUDA streams of overlap: made again on first use
        return state

    def extra_repr(self) -> str:
        attention = repr(self.anar_name) if self.anar_name is not None else "None"
        return f"flows={self.flows}, anar={attention}, eta={self.eta}"

    def init_attention(self, mode: str = "identity") -> None:
        """(Re-)initialise every ANAR: ``"identity"`` sets each ANAR's last conv to weight 0
        and bias ``logit(1 - eta)``, so every gate is ``1 - eta`` and Eq. 5 multiplies each
        stage output by exactly 1 (the network computes its plain counterpart, the other
        flows' statistics aside); ``"random"`` re-draws every ANAR layer; ``"fan_in"`` draws
        them in Kaiming's fan-in mode around the identity level (:meth:`ANAR.reset_parameters`).
        Other weights and all BatchNorm layers are left as they are."""
        mode = resolve_attention_init(mode)
        if mode == "identity" and self.attention and not 0.0 < self.eta < 1.0:
            raise ValueError(f"attention_init: 'identity' needs 0 < eta < 1 (a gate g + eta = 1 with g in (0, 1)); "
                             f"got eta={self.eta}")
        for g in self.attention:
            if mode == "fan_in":
                g.reset_parameters(gate=1.0 - self.eta if 0.0 < self.eta < 1.0 else None, fan_in=True)
            else:
                g.reset_parameters(gate=1.0 - self.eta if mode == "identity" else None)

    @property
    def has_attention(self) -> bool:
        """False for the flows-only ablation (``anar=None``) and for a single flow."""
        return len(self.attention) > 0

    def stages_in_flow(self, n: int) -> int:
        """S(n) = L - (N - n), Eq. 1 (n is 1-based)."""
        return len(self.stages) - (self.flows - n)

    def flow_channels(self) -> list[int]:
        """Channels of each flow's last map, flow 1 first."""
        return [self.channels[self.stages_in_flow(n) - 1] for n in range(1, self.flows + 1)]

    def min_input_size(self) -> tuple[int, ...]:
        key = (tuple(self.strides), self.flows, self.dims)
        cached = self.__dict__.get("_min_size")
        if cached is None or cached[0] != key:  # computed once per setting (every forward checks it)
            cached = (key, min_input_size(self.strides, self.flows, self.dims))
            self.__dict__["_min_size"] = cached
        return cached[1]

    @contextmanager
    def record_attention(self) -> Iterator[AttentionMaps]:
        """Collect the attention maps of every forward run inside the block.

        ``maps[(stage, flow)]`` (both 1-based, as in the paper) is g_stage(x^(flow-1))
        as applied in ``flow`` (Eq. 5, before adding eta), resized to its target,
        detached; a later forward overwrites an earlier one's maps."""
        if self._attention_maps is not None:
            raise RuntimeError("record_attention: this model is already being recorded")
        maps: AttentionMaps = {}
        self._attention_maps = maps
        try:
            yield maps
        finally:
            self._attention_maps = None

    @contextmanager
    def replace_gates(self, fn: GateFn) -> Iterator[None]:
        """Apply ``fn(stage, flow, g)`` instead of each ANAR map ``g`` (``(B, 1, *S)``, resized
        to its target) while the block runs: the attention ablations of
        :func:`tdaf.attention_stats.attention_ablation` replace every gate by its average map
        over images, or by a constant. :meth:`record_attention` records what is applied."""
        if self._gate_fn is not None:
            raise RuntimeError("replace_gates: the gates of this model are already being replaced")
        self._gate_fn = fn
        try:
            yield
        finally:
            self._gate_fn = None

    @contextmanager
    def record_flows(self) -> Iterator[list[list[torch.Tensor]]]:
        """Collect every flow's stage outputs (not detached, so a gradient can be taken with
        respect to them: how much of the loss's gradient reaches each flow) while the block
        runs; ``flows[n - 1]`` is flow n's, as :meth:`forward_flows` returns them."""
        if self._flow_outputs is not None:
            raise RuntimeError("record_flows: this model's flows are already being recorded")
        flows: list[list[torch.Tensor]] = []
        self._flow_outputs = flows
        try:
            yield flows
        finally:
            self._flow_outputs = None

    def forward_flows(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Every flow's stage outputs, flow 1 first: ``result[n - 1][l - 1]`` is
        x_{l+1}^(n), and flow n has S(n) of them (Eq. 1)."""
        check_input(x, self.in_chans, self.min_input_size(), self.dims)
        if (self.overlap and is_eager() and x.is_cuda and self.flows > 1 and self.has_attention
                and self._attention_maps is None and self._gate_fn is None and self._flow_outputs is None):
            return self._forward_flows_overlapped(x)
        inputs = flow_inputs(x, self.down, self.flows)  # inputs[n - 1] is flow n's input
        # Looked up per call: freeze_mfbn / convert_to_mfbn may have replaced norm layers since.
        norms = mfbn_modules(self)
        result: list[list[torch.Tensor]] = []
        recompute = _RecomputeGated() if self.has_attention and _RecomputeGated.applicable() else None
        with recompute.hooks() if recompute is not None else nullcontext():
            for n in range(1, self.flows + 1):
                set_flow(norms, n - 1)
                result.append(self._run_flow(n, inputs[n - 1], result[-1] if result else [], recompute))
        set_flow(norms, self.flows - 1)
        if self._flow_outputs is not None:
            self._flow_outputs[:] = result
        return result

    def _run_flow(self, n: int, y: torch.Tensor, previous: Sequence[torch.Tensor],
                  recompute: _RecomputeGated | None,
                  maps: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
                  after_stage: Callable[[int, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Flow n's stages from its input ``y``, each output gated (Eq. 5) where flow n-1 ran
        the stage: by g_l of ``previous[l]``, or by ``maps[l](output)`` where the maps are
        computed elsewhere (the overlapped path)."""
        outputs: list[torch.Tensor] = []
        gated = min(len(maps) if maps is not None else len(previous), len(self.attention))
        for l in range(self.stages_in_flow(n)):
            y = self.stages[l](y)
            _check_stage_output(y, self.channels[l], l + 1)
            if l < gated:  # flow n-1 ran stage l
                a = maps[l](y) if maps is not None else self._attend(l, previous[l], y, n)
                s = a + self.eta
                z = y * s
                if recompute is not None:
                    recompute.add(z, y, s)
                y = z
            outputs.append(y)
            if after_stage is not None:
                after_stage(l, y)
        return outputs

    def _forward_flows_overlapped(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """:meth:`forward_flows` with the work that flow N waits for on a side stream.

        §4.5 of the paper: only the ANARs are sequential. Flow N's stage l needs nothing from
        the other flows until its gate, so the side stream runs flows 1..N-1 and, as soon as
        flow N-1 has finished stage l, the ANAR g_l that gates flow N (its map and an event);
        the current stream runs flow N's stages and waits for each event only at its gate.
        Kernels are issued with the same inputs and flows' statistics as in the sequential
        path, so the results are the same; streams only let the GPU run them at once."""
        main = torch.cuda.current_stream(x.device)
        side = self.__dict__.setdefault("_side_streams", {}).get(x.device)
        if side is None:
            side = self._side_streams[x.device] = torch.cuda.Stream(device=x.device)
        norms = mfbn_modules(self)
        inputs = flow_inputs(x, self.down, self.flows)
        last = self.flows
        maps: list[Callable[[torch.Tensor], torch.Tensor]] = []

        def map_for_last_flow(l: int, y: torch.Tensor) -> None:  # on the side stream, after flow N-1's stage l
            if l >= len(self.attention):
                return
            set_flow(norms, last - 1)
            a = self.attention[l](y)
            set_flow(norms, last - 2)
            event = torch.cuda.Event()
            event.record(side)

            def ready(target: torch.Tensor, a: torch.Tensor = a, event: torch.cuda.Event = event) -> torch.Tensor:
                main.wait_event(event)
                a.record_stream(main)
                return self._resize(a, target)

            maps.append(ready)

        result: list[list[torch.Tensor]] = []
        recompute = _RecomputeGated() if _RecomputeGated.applicable() else None
        side.wait_stream(main)
        with recompute.hooks() if recompute is not None else nullcontext():
            with torch.cuda.stream(side):
                for n in range(1, last):
                    set_flow(norms, n - 1)
                    result.append(self._run_flow(n, inputs[n - 1], result[-1] if result else [], recompute,
                                                 after_stage=map_for_last_flow if n == last - 1 else None))
            set_flow(norms, last - 1)
            result.append(self._run_flow(last, inputs[-1], [], recompute, maps=maps))
        main.wait_stream(side)
        for outputs in result[:-1]:
            for t in outputs:
                t.record_stream(main)
        return result

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_flows(x)[-1]

    def _attend(self, l: int, source: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
        anar: ANAR = self.attention[l]  # type: ignore[assignment]
        a = self._resize(anar(source), target)
        if self._gate_fn is not None:
            a = self._gate_fn(l + 1, n, a)
        if self._attention_maps is not None:
            self._attention_maps[(l + 1, n)] = a.detach()
        return a

    def _resize(self, a: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # ANAR upsamples x2; odd sizes round differently, so resize to the target. Where the
        # sizes match that is an identity and is skipped, except when tracing or exporting
        # (the traced graph must stay shape-generic).
        if not is_eager() or a.shape[2:] != target.shape[2:]:
            a = F.interpolate(a, size=target.shape[2:], mode=self._mode, align_corners=False)
        return a


def overlap_flows(model: nn.Module, enabled: bool = True) -> int:
    """Set :attr:`R2DNS.overlap` on every R2DNS inside ``model`` (a classifier, a detector, a
    pose or video model) and return how many there are. On a CUDA device the extra flows
    and the ANARs then run on a second stream, concurrently with the last flow; elsewhere
    (CPU, tracing, compiling, recording attention) it changes nothing."""
    found = [m for m in model.modules() if isinstance(m, R2DNS)]
    for m in found:
        m.overlap = bool(enabled)
    return len(found)


def init_attention(model: nn.Module, mode: str = "identity") -> int:
    """Run :meth:`R2DNS.init_attention` on every R2DNS inside ``model`` (any task's model)
    and return how many there are: ``init_attention(model, "identity")`` after loading a
    plain network's weights makes the TDAF model compute that network at step 0."""
    found = [m for m in model.modules() if isinstance(m, R2DNS)]
    for m in found:
        m.init_attention(mode)
    return len(found)
