"""What the attention does, in numbers: statistics of the ANAR gates, whether they single out
the object, and what the image-specific part of them is worth.

For every gated (stage, flow) of a TDAF model (:func:`tdaf.record_attention`'s maps ``g``,
the sigmoid output of ANAR before Eq. 5 adds eta):

* ``mean``, ``std``, ``p5``, ``p95`` of ``g`` over images and positions;
* ``moved``: mean ``|g - g0|``, ``g0`` the gates of the same images at the run's start
  (the identity start is ``1 - eta`` everywhere);
* ``focus``: mean ``g`` inside the object over mean ``g`` outside it, where the data say
  where the object is (a region map: 1 inside, 0 outside, -1 ignored, e.g. padding); 1 is
  no preference. ``focus_applied`` is the same ratio of the factor Eq. 5 multiplies by,
  ``g + eta``: how much more of the object than of the rest the next stage receives.

:func:`attention_ablation` measures a metric with every gate replaced by its average map over
images and by a constant (each image keeping its own mean gate in both), so the drop from
the trained model's metric is what the image-specific placement of the attention is worth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .r2dns import R2DNS, AttentionMaps

__all__ = [
    "GATE_STATS", "gate_statistics", "gate_key", "boxes_to_regions", "resize_regions", "attention_ablation",
    "ABLATIONS", "focus_summary",
]

GATE_STATS = ("mean", "std", "p5", "p95", "moved", "focus", "focus_applied")
ABLATIONS = ("average_map", "constant")
_QUANTILE_MAX = 1 << 22  # torch.quantile's input limit is 16M elements: subsample evenly above this


def gate_key(stage: int, flow: int) -> str:
    """``s1f2``: the column prefix of gate (stage, flow), both 1-based."""
    return f"s{stage}f{flow}"


def _fit(g: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``g`` (``(B, 1, *S)``) resized to ``size`` (bilinear / trilinear), as ``(B, *size)``."""
    if tuple(g.shape[2:]) != tuple(size):
        g = F.interpolate(g, size=tuple(size), mode="bilinear" if g.dim() == 4 else "trilinear", align_corners=False)
    return g[:, 0]


def boxes_to_regions(boxes: Sequence[Sequence[Sequence[float]]], size: Sequence[int],
                     valid: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """Region maps ``(B, H, W)`` (int8: 1 inside any box, 0 outside, -1 ignored) from each
    image's ``[x0, y0, x1, y1]`` boxes in pixels of an ``H x W`` frame; ``valid[i] = (h, w)``
    marks the part of the frame image ``i`` covers (the rest, padding, is ignored)."""
    h, w = int(size[0]), int(size[1])
    out = torch.zeros(len(boxes), h, w, dtype=torch.int8)
    for i, image_boxes in enumerate(boxes):
        if valid is not None:
            vh, vw = int(valid[i][0]), int(valid[i][1])
            out[i, vh:, :] = -1
            out[i, :, vw:] = -1
        for x0, y0, x1, y1 in image_boxes:
            c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
            c1, r1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
            if c1 > c0 and r1 > r0:
                region = out[i, r0:r1, c0:c1]
                region[region == 0] = 1
    return out


def resize_regions(regions: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Region maps ``(B, *S)`` resized (nearest) to ``size``."""
    if tuple(regions.shape[1:]) == tuple(size):
        return regions
    return F.interpolate(regions[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(torch.int8)


def _quantiles(flat: torch.Tensor, qs: Sequence[float]) -> list[float]:
    if flat.numel() > _QUANTILE_MAX:
        flat = flat[:: math.ceil(flat.numel() / _QUANTILE_MAX)]
    return torch.quantile(flat, torch.tensor(qs, dtype=flat.dtype)).tolist()


def gate_statistics(maps: AttentionMaps, eta: float, start: Mapping[tuple[int, int], torch.Tensor] | None = None,
                    regions: torch.Tensor | None = None) -> dict[str, float]:
    """``{"s1f2_mean": ..., ...}``: the :data:`GATE_STATS` of every map (see the module doc).

    ``start``: the maps of the same inputs at the run's start (``moved``; NaN without it).
    ``regions``: ``(B, *S)`` in the frame of the model's input (1 object, 0 background, -1
    ignored); each map is resized to it for the focus (NaN without it, or where either side
    is empty)."""
    out: dict[str, float] = {}
    for (stage, flow), g in sorted(maps.items()):
        key = gate_key(stage, flow)
        g = g.detach().float().cpu()
        flat = g.flatten()
        p5, p95 = _quantiles(flat, (0.05, 0.95))
        out[f"{key}_mean"] = flat.mean().item()
        out[f"{key}_std"] = flat.std(unbiased=False).item()
        out[f"{key}_p5"], out[f"{key}_p95"] = p5, p95
        g0 = None if start is None else start.get((stage, flow))
        out[f"{key}_moved"] = ((g - g0.float().cpu()).abs().mean().item()
                               if g0 is not None and g0.shape == g.shape else math.nan)
        out[f"{key}_focus"] = out[f"{key}_focus_applied"] = math.nan
        if regions is not None:
            full = _fit(g, regions.shape[1:])
            inside, outside = regions == 1, regions == 0
            if inside.any() and outside.any():
                a, b = full[inside].mean().item(), full[outside].mean().item()
                out[f"{key}_focus"] = a / b if b > 0 else math.nan
                out[f"{key}_focus_applied"] = (a + eta) / (b + eta)
    return out


def focus_summary(stats: Mapping[str, float]) -> dict[str, float]:
    """``{"s1f2": focus, ...}``: the focus of each gate in ``stats`` (finite ones only)."""
    return {k[: -len("_focus")]: v for k, v in stats.items() if k.endswith("_focus") and math.isfinite(v)}


def _per_image_mean(a: torch.Tensor) -> torch.Tensor:
    return a.mean(dim=tuple(range(1, a.dim())), keepdim=True)


@torch.no_grad()
def attention_ablation(r2dns: R2DNS, metric: Callable[[], float]) -> dict[str, Any]:
    """The metric of the model (``metric()`` runs it over the evaluation data and returns
    one number) as trained and with its gates replaced, three passes:

    * ``trained``: as it is; the gates' average map over the images is collected meanwhile;
    * ``average_map``: every gate replaced by that average map, shifted to each image's own
      mean gate (the placement common to all images, the image's own level);
    * ``constant``: every gate replaced by each image's own mean gate (no placement at all).

    Returns ``{"trained": m, "average_map": m, "constant": m, "average_map_drop": ...,
    "constant_drop": ...}`` (drop = trained - ablated: what the ablated part was worth)."""
    sums: dict[tuple[int, int], torch.Tensor] = {}
    counts: dict[tuple[int, int], int] = {}

    def collect(stage: int, flow: int, g: torch.Tensor) -> torch.Tensor:
        key = (stage, flow)
        ref = sums.get(key)
        fitted = g.float() if ref is None else _fit(g.float(), ref.shape[1:])[:, None]
        sums[key] = fitted.sum(0) if ref is None else ref + fitted.sum(0)
        counts[key] = counts.get(key, 0) + g.shape[0]
        return g

    def average(stage: int, flow: int, g: torch.Tensor) -> torch.Tensor:
        avg = (sums[(stage, flow)] / counts[(stage, flow)])[None]
        avg = _fit(avg, g.shape[2:])[:, None].to(g.dtype)
        return (avg - _per_image_mean(avg) + _per_image_mean(g)).clamp(0.0, 1.0)

    def constant(stage: int, flow: int, g: torch.Tensor) -> torch.Tensor:
        return _per_image_mean(g).expand_as(g)

    result: dict[str, Any] = {}
    for name, fn in (("trained", collect), ("average_map", average), ("constant", constant)):
        with r2dns.replace_gates(fn):
            result[name] = float(metric())
    for name in ABLATIONS:
        result[f"{name}_drop"] = result["trained"] - result[name]
    return result
