"""How many data-loader workers and torch threads a run uses, chosen so that together they
do not oversubscribe the cores this process may use.

On a CPU the model's own work takes every intra-op thread; a loader worker is another
busy process on the same cores. On a 2-core machine a detection quick run went from 0.5
to 6.4 images/s when its loader stopped competing with torch's threads (a loaded
machine: oversubscribed OpenMP threads wait on each other). So on a CPU the loader runs
in the main process unless there are cores to spare, and torch gets the rest; on a GPU
the loader gets every core but one.
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["available_cores", "loader_workers", "cpu_plan"]

log = logging.getLogger("tdaf.engine")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as taskset / cgroups set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def loader_workers(requested: int | None, device_type: str, *, world_size: int = 1, in_memory: bool = False) -> int:
    """Loader processes per training/evaluation process: ``requested`` if given; 0 for a
    data set held in memory (starting workers costs more than its augmentation); on a CPU
    0 up to 4 cores per process and a quarter of them above; on a GPU every core but one
    (at most 8)."""
    if requested is not None:
        if requested < 0:
            raise ValueError(f"workers: got {requested}; allowed: an integer >= 0, or automatic")
        return requested
    if in_memory:
        return 0
    cores = max(1, available_cores() // max(1, world_size))
    if device_type == "cpu":
        return 0 if cores <= 4 else min(4, cores // 4)
    return max(1, min(8, cores - 1))


def cpu_plan(workers: int, device_type: str, *, world_size: int = 1, threads_given: bool = False) -> str:
    """On a CPU, lower torch's intra-op threads so that threads + loader workers fit the
    cores of this process (unless the user set ``--threads``); return the one line that
    says what was chosen."""
    cores = max(1, available_cores() // max(1, world_size))
    if device_type == "cpu" and not threads_given and torch.get_num_threads() + workers > cores:
        torch.set_num_threads(max(1, cores - workers))
    threads = torch.get_num_threads()
    line = f"{cores} cores: {threads} torch threads, {workers} loader workers"
    if device_type == "cpu" and threads + workers > cores:
        line += " (more than the cores: expect contention; see --threads / --workers)"
    return line
