"""Attention monitoring during training: what the gates do, epoch by epoch, beside the loss.

After every epoch, :class:`AttentionMonitor` runs the model on a fixed validation subset (the
same items every epoch, chosen once: the first ``task.monitor_count`` of the validation set)
and reports, for every gated (stage, flow), the statistics of
:func:`tdaf.attention_stats.gate_statistics` (mean, spread, movement from the start, focus
on the object where the task says where it is), plus the gradient that one training-mode
step on the same subset sends into each flow's stage outputs and into each ANAR's weights.
With identity attention the gradient into flows 1..N-1 is exactly 0 until the ANARs' last
convs move: this shows whether, and when, the earlier flows start to learn.

The monitor changes no training result: it runs outside the optimizer, leaves every
gradient, BatchNorm statistic and random generator as it found them, and the run's weights
are the same with and without it (tested).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..attention_stats import attention_ablation, gate_key, gate_statistics
from ..r2dns import R2DNS, AttentionMaps
from .evaluate import evaluate_dataset, open_checkpoint
from .options import EvalOptions
from .task import Task, TaskData

__all__ = ["AttentionMonitor", "attention_line", "monitor_batch", "gradient_norms", "map_picture", "start_from_state"]

PICTURES = 4  # validation inputs drawn in TensorBoard every epoch


def monitor_batch(task: Task, dataset: Any, collate: Any,
                  count: int | None = None) -> tuple[Any, Any, list[int] | None] | None:
    """The fixed monitoring subset: ``(inputs, targets, indices)`` of the first ``count``
    (default ``task.monitor_count``) items of ``dataset`` (training's validation split, or a
    checkpoint's evaluation data), collated (``indices`` None when some of them were
    unreadable: then no focus, which needs to know which item is which); None when none is
    readable."""
    count = task.monitor_count if count is None else count
    indices = list(range(min(count, len(dataset))))
    batch = collate([dataset[i] for i in indices])
    if batch.inputs is None:
        return None
    return batch.inputs, batch.targets, None if batch.skipped else indices


@torch.no_grad()
def subset_maps(task: Task, model: nn.Module, inputs: Any) -> AttentionMaps:
    """The gates ``model`` applies to ``inputs`` (eval mode, training mode restored), on the CPU."""
    r2dns = task.attention_r2dns(model)
    if r2dns is None:
        raise ValueError(f"{type(model).__name__} has no R2DNS to read the attention of")
    was_training = model.training
    model.eval()
    try:
        with r2dns.record_attention() as maps:
            task.predict(model, inputs)
    finally:
        model.train(was_training)
    return {k: v.float().cpu() for k, v in maps.items()}


def gradient_norms(task: Task, model: nn.Module, r2dns: R2DNS, inputs: Any, targets: Any) -> dict[str, float]:
    """``grad_flow{n}``: the norm of the training loss's gradient with respect to flow n's
    stage outputs, and ``grad_anar{l}``: with respect to ANAR g_l's weights, for one
    training-mode step on ``inputs``. Leaves ``.grad``, the BatchNorm statistics, the
    random generators and the training mode as they were."""
    saved = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[inputs.device] if isinstance(inputs, torch.Tensor) and inputs.is_cuda
                                   else []):
            with r2dns.record_flows() as flows:
                loss = task.training_step(model, inputs, targets).loss
            outputs = [t for flow in flows for t in flow]
            anar_params = [list(g.parameters()) for g in r2dns.attention]
            tensors = outputs + [p for ps in anar_params for p in ps]
            grads = torch.autograd.grad(loss.float(), tensors, allow_unused=True)
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)
        model.train(was_training)

    def norm(gs: Sequence[torch.Tensor | None]) -> float:
        return math.sqrt(sum(float(g.double().pow(2).sum()) for g in gs if g is not None))

    out: dict[str, float] = {}
    i = 0
    for n, flow in enumerate(flows, start=1):
        out[f"grad_flow{n}"] = norm(grads[i:i + len(flow)])
        i += len(flow)
    for l, ps in enumerate(anar_params, start=1):
        out[f"grad_anar{l}"] = norm(grads[i:i + len(ps)])
        i += len(ps)
    return out


def map_picture(maps: AttentionMaps, pictures: torch.Tensor | None, regions: torch.Tensor | None,
                count: int = PICTURES) -> torch.Tensor:
    """A ``(1, H', W')`` grey picture for TensorBoard's ``add_image``: one row per input (the
    first ``count``), the input (min-max scaled), where the object is (white), then every
    gate map, resized to the input, at its own value (0 black, 1 white: an unmoved identity
    gate of eta 0.5 is mid-grey). Video: the middle frame."""
    from torchvision.utils import make_grid

    def frame(t: torch.Tensor) -> torch.Tensor:  # (B, C, [T,] H, W) -> (B, H, W), the middle frame
        t = t.float().mean(1)
        return t[:, t.shape[1] // 2] if t.dim() == 4 else t

    keys = sorted(maps)
    ref = frame(maps[keys[0]][:count]) if pictures is None else frame(pictures[:count])
    size = ref.shape[-2:]
    cells: list[torch.Tensor] = []
    n = ref.shape[0]
    for i in range(n):
        if pictures is not None:
            p = ref[i]
            cells.append((p - p.min()) / (p.max() - p.min()).clamp_min(1e-8))
        if regions is not None:
            r = regions[i].float()
            r = r[r.shape[0] // 2] if r.dim() == 3 else r
            cells.append(torch.nn.functional.interpolate(r.clamp_min(0)[None, None], size=tuple(size),
                                                          mode="nearest")[0, 0])
        for k in keys:
            m = frame(maps[k][i:i + 1].cpu())[None]
            cells.append(torch.nn.functional.interpolate(m, size=tuple(size), mode="nearest")[0, 0])
    per_row = len(cells) // max(1, n)
    grid = make_grid(torch.stack(cells)[:, None].clamp(0, 1), nrow=per_row, padding=2, pad_value=0.25)
    return grid[:1]


class AttentionMonitor:
    """The per-epoch attention statistics of one run (see the module doc).

    ``start``: the gates of the subset at the run's start (``{(stage, flow): map}``), from
    the checkpoint when resuming; None: recorded now, from ``model`` as it is."""

    def __init__(self, task: Task, data: TaskData, model: nn.Module, device: torch.device,
                 start: dict[tuple[int, int], torch.Tensor] | None = None, memory_format: Any = None) -> None:
        self.task = task
        self.r2dns = task.attention_r2dns(model)
        self.active = self.r2dns is not None and self.r2dns.has_attention
        self.seconds = 0.0
        if not self.active:
            return
        picked = monitor_batch(task, data.val, data.collate)
        if picked is None:
            self.active = False
            return
        inputs, targets, self.indices = picked
        self.inputs, self.targets = task.move(inputs, targets, device, memory_format or torch.contiguous_format)
        self.regions = (None if self.indices is None else
                        task.attention_regions(model, data.val, self.indices, self.inputs, self.targets))
        self.pictures = self.inputs if isinstance(self.inputs, torch.Tensor) else None
        self.start = start if start is not None else self.maps(model)

    def maps(self, model: nn.Module) -> AttentionMaps:
        """The gates of the subset (eval mode), on the CPU."""
        return subset_maps(self.task, model, self.inputs)

    def epoch(self, eval_model: nn.Module, train_model: nn.Module) -> tuple[dict[str, float], torch.Tensor | None]:
        """The statistics (``attn_<gate>_<stat>``, ``grad_*`` and ``attn_monitor_s``, the
        seconds it took) and the TensorBoard picture of this epoch's gates."""
        if not self.active:
            return {}, None
        t0 = time.perf_counter()
        maps = self.maps(eval_model)
        eta = self.r2dns.eta if self.r2dns is not None else 0.5
        stats = {f"attn_{k}": v for k, v in gate_statistics(maps, eta, self.start, self.regions).items()}
        r2dns = self.task.attention_r2dns(train_model)
        assert r2dns is not None
        stats.update(gradient_norms(self.task, train_model, r2dns, self.inputs, self.targets))
        picture = map_picture(maps, self.pictures.cpu() if self.pictures is not None else None,
                              self.regions)
        self.seconds = time.perf_counter() - t0
        stats["attn_monitor_s"] = self.seconds
        return stats, picture

    def start_state(self) -> dict[str, torch.Tensor]:
        """The start maps as a checkpoint stores them (``{"s1f2": map}``)."""
        return {gate_key(*k): v for k, v in self.start.items()} if self.active else {}


def start_from_state(state: dict[str, torch.Tensor] | None) -> dict[tuple[int, int], torch.Tensor] | None:
    """:meth:`AttentionMonitor.start_state` read back."""
    if not state:
        return None
    out = {}
    for k, v in state.items():
        stage, flow = k[1:].split("f")
        out[(int(stage), int(flow))] = v
    return out


def _span(values: Sequence[float], fmt: str = ".2f") -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    lo, hi = min(finite), max(finite)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


def attention_line(row: dict[str, Any]) -> str:
    """One log line of an epoch's attention statistics: the range over the gates of each
    statistic, and the gradient into each flow."""
    def over(stat: str) -> list[float]:
        return [v for k, v in row.items() if k.startswith("attn_s") and k.endswith(f"_{stat}")]

    flows = [f"{v:.2g}" for k, v in sorted(row.items()) if k.startswith("grad_flow")]
    return (f"attention: gate mean {_span(over('mean'))}, std {_span(over('std'), '.3f')}, moved "
            f"{_span(over('moved'), '.3f')}, focus {_span(over('focus'))} (applied {_span(over('focus_applied'))}); "
            f"gradient into flows {' / '.join(flows)}; {row.get('attn_monitor_s', math.nan):.1f} s")


def checkpoint_attention_stats(checkpoint: str | Any, options: Any = None, count: int | None = None,
                               ablation: bool = True) -> dict[str, Any]:
    """``tdaf attention --stats``: a checkpoint's gate statistics on the first ``count``
    items (default: the task's ``monitor_count``, the subset its training monitored) of its
    evaluation data (``options``: an :class:`~tdaf.engine.options.EvalOptions`; the split,
    subset, data set and batch size), ``moved`` measured from the start maps its training
    recorded where it recorded them on the same items; and, with ``ablation``, the task's
    main metric on the whole evaluation data as trained, with every gate replaced by its
    average map and by a constant (:func:`tdaf.attention_stats.attention_ablation`)."""
    options = options or EvalOptions()
    task, opened = open_checkpoint(checkpoint, options)
    model = opened.model.eval()
    r2dns = task.attention_r2dns(model)
    if r2dns is None or not r2dns.has_attention:
        raise ValueError(f"--checkpoint: {checkpoint} holds {opened.meta.get('model_name')}, which has no attention "
                         f"(a plain model, one flow, or flows without ANAR)")
    data = task.eval_data(opened, options)
    n = min(task.monitor_count if count is None else count, len(data.dataset))
    picked = monitor_batch(task, data.dataset, data.collate, n)
    if picked is None:
        raise ValueError(f"--checkpoint: none of the first {n} evaluation items of {opened.data} is readable")
    inputs, targets, indices = picked
    inputs, targets = task.move(inputs, targets, next(model.parameters()).device)
    regions = None if indices is None else task.attention_regions(model, data.dataset, indices, inputs, targets)
    maps = subset_maps(task, model, inputs)
    saved = start_from_state(opened.payload.get("attention_start"))
    start = saved if saved is not None and n == task.monitor_count and not options.subset else None
    stats = gate_statistics(maps, r2dns.eta, start, regions)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "model": opened.meta.get("model_name"),
                              "data": opened.data, "split": options.split, "images": n, "eta": r2dns.eta,
                              "regions": regions is not None, "gates": _by_gate(stats)}
    if ablation:
        batch_size = options.batch_size if options.batch_size is not None else task.eval_batch_size
        key = task.main_metric

        def metric() -> float:
            # a fresh copy of the task's evaluator for each pass (detection's holds the ground truth)
            evaluator = copy.deepcopy(data.evaluator) if data.evaluator is not None else None
            result = evaluate_dataset(model, data.dataset, data.collate, task, batch_size=batch_size, workers=0,
                                      device=options.device, progress=options.progress, evaluator=evaluator)
            return float(result[key]) if result is not None else math.nan

        report["ablation"] = {"metric": key, **attention_ablation(r2dns, metric)}
    return report


def _by_gate(stats: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"s1f2_mean": v}`` as ``{"s1f2": {"mean": v}}``."""
    out: dict[str, dict[str, float]] = {}
    for k, v in stats.items():
        gate, stat = k.split("_", 1)
        out.setdefault(gate, {})[stat] = v
    return out
