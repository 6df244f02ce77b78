"""What ``tdaf eval`` and ``tdaf predict`` hand to a task: the options of one evaluation or
one prediction run, the checkpoint they read, and the data a task builds for evaluation.

The commands are written once; a task's hooks (:class:`tdaf.engine.task.Task`) receive
these objects and supply only what differs between tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = ["EvalOptions", "EvalData", "CheckpointToEvaluate", "PredictOptions"]


@dataclass
class EvalOptions:
    """The options of one evaluation (``tdaf eval``'s flags; :func:`tdaf.engine.evaluate.evaluate_checkpoint`).

    ``data``: the data set (None: the checkpoint's); ``data_dir``: its folder (None: where
    the checkpoint's run read it); ``subset``: a fixed random subset of N samples;
    ``batch_size`` None: the task's ``eval_batch_size``; ``workers`` None: automatic.
    ``fold_bn``: evaluate the inference form of the checkpoint's model
    (:func:`tdaf.fold_batchnorm`: every BatchNorm and MFBN folded into the convolution
    before it; the same outputs to float rounding); False: the model as trained.
    ``task``: the task's own options by the dests of its flags (``{"ten_crop": True}``,
    ``{"person_boxes": "dets.json"}``, ...; see each task's ``add_eval_args``).
    """

    data: str | None = None
    data_dir: str | os.PathLike[str] | None = None
    split: str = "val"
    subset: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    strict: bool = False
    progress: bool | None = None  # None: bars on a terminal, plain lines elsewhere
    overwrite: bool = False
    fold_bn: bool = True
    task: dict[str, Any] = field(default_factory=dict)

    def option(self, dest: str, default: Any = None) -> Any:
        """The task option ``dest``, or ``default`` when it was not given (None)."""
        value = self.task.get(dest)
        return default if value is None else value


@dataclass
class CheckpointToEvaluate:
    """A checkpoint opened for ``tdaf eval``: its model (eval mode), meta, the data set to
    evaluate on and its folder (the one given, else where the checkpoint's run read it;
    None: the data set's own place), the whole checkpoint (config, history, ...) and its path."""

    model: nn.Module
    meta: dict[str, Any]
    data: str
    payload: dict[str, Any]
    path: str = ""
    data_dir: str | None = None


@dataclass
class EvalData:
    """What a task evaluates a checkpoint on: the transformed ``dataset`` and its
    ``collate``; ``evaluator`` (None: the task's :meth:`~tdaf.engine.task.Task.evaluator`);
    ``info``: keys added to the result (e.g. ``crops``, ``clips_per_video``); ``in_memory``:
    load without worker processes by default; ``finish(result)``: run on the main process
    with the result (e.g. to write the detections and name the file in the result)."""

    dataset: Dataset
    collate: Callable[[list[Any]], Any]
    info: dict[str, Any] = field(default_factory=dict)
    evaluator: Any = None
    in_memory: bool = False
    finish: Callable[[dict[str, Any]], None] | None = None


@dataclass
class PredictOptions:
    """The options of one ``tdaf predict`` run, as a task's ``run_predictions`` receives them:
    the ``checkpoint`` path, the ``device`` (resolved), ``batch_size``, ``workers`` (None:
    automatic), ``progress``, ``overwrite`` (existing output files), ``described`` (the model
    in words, for the summary line) and ``task``: the task's own flags by dest."""

    checkpoint: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 32
    workers: int | None = None
    progress: bool | None = None  # None: bars on a terminal, plain lines elsewhere
    overwrite: bool = False
    described: str = ""
    task: dict[str, Any] = field(default_factory=dict)

    def option(self, dest: str, default: Any = None) -> Any:
        """The task option ``dest``, or ``default`` when it was not given (None)."""
        value = self.task.get(dest)
        return default if value is None else value
