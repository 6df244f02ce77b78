"""Comparing two models over seeds: means with their spread, the paired difference with a
95% interval, and a verdict that says only what the interval allows.

A single run's accuracy moves with the seed and with float rounding (a processor with
other vector units rounds differently), so a comparison is a set of paired runs: seed s
trains both models with the same data order and augmentation. The interval of the mean
paired difference is Student's t over seeds (it contains the training noise); a paired
bootstrap over test images (the seeds' per-image results averaged) shows the part of the
noise that comes from the finite test set. The verdict follows the seed interval.
A run that did not learn (its final training loss not below ``learned_loss``) is reported
and counted, and left out of the means with its pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["t_quantile", "MeanStd", "mean_std", "PairedDifference", "paired_difference", "bootstrap_paired",
           "verdict", "format_pm"]

# Student's t, two-sided 95% (the 0.975 quantile), for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df: got {df}; allowed: >= 1 (two or more seeds)")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df  # within 0.002 of the exact value above 30


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for one value
    n: int


def mean_std(values: Sequence[float]) -> MeanStd:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return MeanStd(math.nan, math.nan, 0)
    return MeanStd(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` per seed, its mean and the 95% t interval (NaN bounds below two pairs)."""

    diffs: tuple[float, ...]
    mean: float
    std: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return len(self.diffs)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """The paired differences ``b[i] - a[i]`` with Student's t 95% interval of their mean."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} vs {len(b)} values; pairs need equal counts")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    ms = mean_std(d)
    if ms.n < 2:
        return PairedDifference(tuple(d.tolist()), ms.mean, ms.std, math.nan, math.nan)
    half = t_quantile(ms.n - 1) * ms.std / math.sqrt(ms.n)
    return PairedDifference(tuple(d.tolist()), ms.mean, ms.std, ms.mean - half, ms.mean + half)


def mean_interval(values: Sequence[float]) -> PairedDifference:
    """The mean of ``values`` (one per seed) with its Student's t 95% interval (NaN bounds
    below two values; non-finite values left out)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    return paired_difference([0.0] * len(finite), finite)


def format_interval(values: Sequence[float], digits: int = 2, sign: bool = False) -> str:
    """``mean [low, high]`` of :func:`mean_interval` (one value: itself; none: ``-``)."""
    d = mean_interval(values)
    fmt = f"{'+' if sign else ''}.{digits}f"
    if d.n == 0:
        return "-"
    if d.n < 2:
        return f"{d.mean:{fmt}} (n=1)"
    return f"{d.mean:{fmt}} [{d.low:{fmt}}, {d.high:{fmt}}]"


def bootstrap_paired(correct_a: np.ndarray, correct_b: np.ndarray, *, resamples: int = 10000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy difference ``b - a`` and its 95% percentile interval from resampling
    test images. ``correct_*``: ``(seeds, images)`` arrays of 0/1 (or per-image scores),
    averaged over seeds first, so the interval reflects the test set's finite size only."""
    a = np.asarray(correct_a, dtype=np.float64).reshape(-1, np.shape(correct_a)[-1]).mean(0)
    b = np.asarray(correct_b, dtype=np.float64).reshape(-1, np.shape(correct_b)[-1]).mean(0)
    if a.shape != b.shape:
        raise ValueError(f"bootstrap_paired: {a.shape} vs {b.shape} images; the same test images are needed")
    d = b - a
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # bounded memory
        idx = rng.integers(0, d.size, size=(min(1000, resamples - start), d.size))
        means[start:start + len(idx)] = d[idx].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(low), float(high)


def verdict(diff: PairedDifference, what: str = "TDAF", unit: str = " points") -> str:
    """One sentence that says only what the 95% interval of ``diff`` allows."""
    if diff.n == 0:
        return "no pair of runs to compare: no verdict"
    if diff.n < 2:
        return f"{what} - baseline: {diff.mean:+.2f}{unit} from one pair; no interval, no verdict (run more seeds)"
    span = f"{diff.mean:+.2f}{unit}, 95% interval [{diff.low:+.2f}, {diff.high:+.2f}] over {diff.n} seeds"
    if diff.low > 0:
        return f"{what} is better than its baseline: {span}"
    if diff.high < 0:
        return f"{what} is worse than its baseline: {span}"
    return f"within noise: {span} contains 0, so this run cannot tell {what} from its baseline"


def format_pm(ms: MeanStd, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (``n/a`` without values)."""
    if ms.n == 0:
        return "n/a"
    return f"{ms.mean * scale:.{digits}f} ± {ms.std * scale:.{digits}f}"
