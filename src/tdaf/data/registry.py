"""The data set registry: every task registers the data sets it reads, by name.

``tdaf train --data NAME`` looks the name up here for the run's task, so neither the
engine nor the command line holds a list of data sets or an if-chain over them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["DatasetSpec", "register_dataset", "dataset_spec", "dataset_names", "data_home"]


def data_home() -> Path:
    """Where the bundled data sets that are written on first use live (digit scenes, stick
    figures, moving digits): ``$TDAF_DATA``, default ``~/.cache/tdaf``. (``$TDAF_CACHE``, the
    name earlier releases read for the digit scenes, is still honoured when ``TDAF_DATA`` is unset.)"""
    home = os.environ.get("TDAF_DATA") or os.environ.get("TDAF_CACHE") or Path.home() / ".cache" / "tdaf"
    return Path(home).expanduser()


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set.

    ``open(split, data_dir)`` returns the untransformed ``"train"`` or ``"val"`` split;
    ``needs_dir`` says whether it reads ``--data-dir`` (bundled sets do not);
    ``defaults`` holds the task's per-data-set defaults (input size, mean/std, recipe, ...);
    ``help`` is one line for ``--help``.
    """

    name: str
    task: str
    open: Callable[[str, Any], Any]
    needs_dir: bool
    help: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)


_DATASETS: dict[tuple[str, str], DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    key = (spec.task, spec.name)
    if key in _DATASETS:
        raise ValueError(f"data set {spec.name!r} of task {spec.task!r} is registered twice")
    _DATASETS[key] = spec
    return spec


def dataset_names(task: str) -> list[str]:
    """The data sets registered for ``task``, in registration order."""
    return [name for (t, name) in _DATASETS if t == task]


def dataset_spec(name: str, task: str, what: str = "--data") -> DatasetSpec:
    """The spec of data set ``name`` of ``task``; ValueError naming ``what`` otherwise."""
    spec = _DATASETS.get((task, name))
    if spec is None:
        names = dataset_names(task)
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"{what}: got {name!r}{hint}; allowed for task {task}: {', '.join(names) or 'none'}")
    return spec
