"""The task interface: what the trainer needs from a task, and nothing more.

The trainer (:mod:`tdaf.engine.trainer`) is shared by every task of the paper
(classification §4.1, detection §4.2, pose §4.3, video §4.4). It never looks behind
this interface: a task builds its model and its data, turns a batch into losses, and
supplies an :class:`Evaluator` whose metrics decide ``best.pt``. Tasks live in their own
packages (``tdaf.classification``, ...) and register themselves with
:func:`register_task`; the engine names none of them.

Batches: a task's ``collate`` returns a :class:`Batch`, ``(inputs, targets, skipped)``:
``inputs`` is whatever the model takes (None when every item of the batch was
unreadable), ``targets`` whatever the loss and the evaluator take, ``skipped`` the names
of unreadable items (skipped and counted by the trainer, or fatal under ``strict``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..data.checks import input_size_hw
from ..data.loading import Batch
from ..io.images import collect_images, open_image, unique_stems
from ..r2dns import R2DNS
from .options import CheckpointToEvaluate, EvalData, EvalOptions, PredictOptions

__all__ = [
    "Task", "Evaluator", "Batch", "StepOutput", "TaskData", "BuiltModel", "AttentionItem", "register_task",
    "get_task", "task_names", "task_for_config", "with_task_defaults", "move_to", "task_flags", "checkpoint_task",
    "foreign_flag_error",
]


@dataclass
class StepOutput:
    """A training step's result for one micro-batch.

    ``loss`` is the scalar to back-propagate (a mean over the micro-batch); ``count`` the
    number of samples; ``sums`` summable statistics (e.g. correct predictions, or each
    loss term times ``count``), reported per epoch as ``train_<key>`` = sum / count.
    """

    loss: torch.Tensor
    count: int
    sums: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TaskData:
    """A task's data for one run.

    ``meta`` is what a checkpoint must know to use the model on new data (class names,
    mean/std, input size, ...; stored under the checkpoint's ``meta``); ``in_memory``
    data sets load without worker processes by default; ``data_dir`` is the folder the data
    was read from when it is not the config's ``data_dir`` (e.g. a bundled set written
    under the run's folder): checkpoints record it, absolute, for ``tdaf eval``.
    """

    train: Dataset
    val: Dataset
    collate: Callable[[list[Any]], Batch]
    meta: dict[str, Any]
    in_memory: bool = False
    description: str = ""
    unit: str = "images"
    data_dir: str | None = None


@dataclass
class BuiltModel:
    """A model and the ``(name, kwargs)`` that rebuild it (``tdaf.create_model`` or the
    task's own builder), recorded in checkpoints."""

    model: nn.Module
    name: str
    kwargs: dict[str, Any]


@dataclass
class AttentionItem:
    """One input of ``tdaf attention``: an image, a video file, a frame folder, or a list
    of image files read as the frames of one clip; ``stem`` names its figure, ``frames``
    is the clip length a video input will have (None for an image), ``from_folder`` says
    that it was found inside a folder named on the command line (then an unreadable one is
    skipped, not fatal), ``box`` an ``[x, y, w, h]`` region of the image (a person box)."""

    stem: str
    paths: list[Path]
    from_folder: bool = False
    frames: int | None = None
    box: list[float] | None = None


class Evaluator(ABC):
    """Accumulates a task's validation metrics: ``update`` per batch, ``gather`` across
    processes, ``compute`` once. ``compute`` returns plain numbers keyed by metric name."""

    @abstractmethod
    def update(self, outputs: Any, targets: Any) -> None: ...

    def gather(self) -> None:
        """Combine the state of every process (a no-op in one process)."""

    @abstractmethod
    def compute(self) -> dict[str, float]: ...


class Task(ABC):
    """One of the paper's tasks, as the trainer sees it.

    Attributes:
        name: the registry name, recorded in checkpoints.
        main_metric: the evaluator key that decides ``best.pt``.
        greater_is_better: direction of ``main_metric``.
        log_metrics: evaluator keys written to ``metrics.csv`` as ``val_<key>``
            (default: every key the evaluator returns).
        train_metrics: ``StepOutput.sums`` keys written as ``train_<key>``.
        defaults: config values for keys left unset (None), e.g. the default model and data set.
        labels: how metric keys read in log lines (``{"top1": "top-1"}``).
    """

    name: str = ""
    main_metric: str = ""
    greater_is_better: bool = True
    log_metrics: tuple[str, ...] | None = None
    train_metrics: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}
    labels: dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> Task:
        """The task object for a training config (task options such as label smoothing)."""
        return cls()

    def check_config(self, cfg: Any, source: str = "config") -> None:
        """Raise ValueError (naming ``source``) for settings this task cannot run."""

    @abstractmethod
    def build_model(self, cfg: Any, meta: dict[str, Any]) -> BuiltModel:
        """The model for ``cfg`` and the data described by ``meta``."""

    @abstractmethod
    def build_data(self, cfg: Any) -> TaskData:
        """The training and validation sets of ``cfg``."""

    def input_dims(self) -> int:
        """Spatial dimensions of the model input (2: images; 3: video clips)."""
        return 2

    def move(self, inputs: Any, targets: Any, device: torch.device,
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[Any, Any]:
        """Move a batch to ``device`` (tensors, and lists / dicts of them)."""
        return move_to(inputs, device, memory_format), move_to(targets, device)

    @abstractmethod
    def training_step(self, model: nn.Module, inputs: Any, targets: Any) -> StepOutput:
        """Forward in training mode and the losses of one micro-batch."""

    @abstractmethod
    def predict(self, model: nn.Module, inputs: Any) -> Any:
        """Eval-mode outputs that :meth:`Evaluator.update` takes."""

    @abstractmethod
    def evaluator(self) -> Evaluator:
        """A fresh evaluator for one validation pass."""

    # ---- tdaf eval and tdaf predict: written once (tdaf.cli.eval, tdaf.cli.predict); a task
    # supplies its own flags, its evaluation data, how it prints, what it predicts on, and how
    # it draws a prediction. Its flags default to None, so the commands can tell a flag given
    # with another task's checkpoint (refused) from one left out.
    eval_batch_size: int = 32  # tdaf eval's --batch-size default for this task

    @classmethod
    def add_eval_args(cls, group: argparse._ArgumentGroup) -> None:
        """This task's own flags of ``tdaf eval`` (default None), in ``group``."""

    def eval_data(self, checkpoint: CheckpointToEvaluate, options: EvalOptions) -> EvalData:
        """The data to evaluate ``checkpoint`` on (``checkpoint.data``, its folder
        ``checkpoint.data_dir``; ``options.split``, ``options.subset``, the task's own
        ``options.task``), with the checkpoint's own preprocessing; may set up this task
        object for the evaluation (e.g. the 10-crop test, the annotations to score against)."""
        raise ValueError(f"--checkpoint: the {self.name} task does not support tdaf eval")

    def format_eval(self, result: dict[str, Any]) -> str:
        """``tdaf eval``'s text for ``result`` (without ``--json``)."""
        metrics = "  ".join(f"{self.labels.get(k, k)} {v:.4f}" for k, v in result.items() if isinstance(v, float))
        return f"{result.get('model')} on {result.get('data')}/{result.get('split')}: {metrics}"

    @classmethod
    def add_predict_args(cls, group: argparse._ArgumentGroup) -> None:
        """This task's own flags of ``tdaf predict`` (default None), in ``group``."""

    def predict_inputs(self, paths: Sequence[str | os.PathLike[str]]) -> Any:
        """What ``tdaf predict``'s positional arguments name: images, and every image in folders
        (an :class:`~tdaf.io.images.ImageList`; ``files``, ``from_folder``, ``ignored``)."""
        return collect_images(paths)

    def run_predictions(self, model: nn.Module, meta: dict[str, Any], inputs: Any,
                        options: PredictOptions) -> dict[str, Any]:
        """``tdaf predict``: the predictions of ``model`` for ``inputs``, as the JSON object the
        command prints (``results`` per input, ``skipped`` and the task's own keys), after
        writing the pictures (:meth:`draw_prediction`) or files the task's flags ask for."""
        raise ValueError(f"--checkpoint: the {self.name} task does not support tdaf predict")

    def format_predictions(self, report: dict[str, Any], options: PredictOptions) -> str:
        """``tdaf predict``'s text for ``report`` (without ``--json``)."""
        return f"{len(report.get('results', []))} input(s); {options.described}"

    def draw_prediction(self, image: Image.Image, prediction: dict[str, Any],
                        meta: dict[str, Any]) -> Image.Image | None:
        """``image`` with ``prediction`` (one of ``run_predictions``' ``results``) drawn on it,
        or None when this task draws no pictures. The one place a task draws its predictions."""
        return None

    def adapt_init_state(self, state: dict[str, torch.Tensor], model: nn.Module,
                         source_task: str | None) -> dict[str, torch.Tensor] | None:
        """``--init-from``: the weights of a checkpoint of task ``source_task`` (None: a bare
        state dict) in the names and shapes of this task's ``model``, or None when this task
        cannot start from that task's weights. Default: its own task's weights, as they are
        (:func:`tdaf.engine.init_from.init_from` copies whatever fits)."""
        return state if source_task in (None, self.name) else None

    def better(self, value: float, best: float | None) -> bool:
        if value != value:  # NaN never improves
            return False
        if best is None:
            return True
        return value > best if self.greater_is_better else value < best

    # --- attention / export / profile
    # ``tdaf attention``, ``tdaf export`` and ``tdaf profile`` are written once over these:
    # a task says what part of its model takes one tensor (``network``), what an input of it
    # looks like (``inference_meta``, ``example_size``), where its R2DNS is, and how to read
    # and preprocess an input file for the attention maps.

    attention_person_boxes: bool = False  # ``tdaf attention --person-boxes`` crops persons (top-down pose)
    monitor_count: int = 64  # validation items the attention monitor of ``tdaf train`` runs on every epoch

    def attention_regions(self, model: nn.Module, dataset: Dataset, indices: Sequence[int], inputs: Any,
                          targets: Any) -> torch.Tensor | None:
        """Where the objects are in ``dataset``'s items ``indices`` (collated and moved as
        ``inputs`` / ``targets``), in the frame of the tensor the task's R2DNS takes: an int8
        ``(B, *S)`` map, 1 on an object, 0 on background, -1 where neither (padding), or None
        when the data do not say (:func:`tdaf.attention_stats.boxes_to_regions` builds one
        from boxes). The attention monitor's focus and ``tdaf attention --stats`` read it."""
        return None

    def inference_meta(self, meta: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
        """``meta`` (a checkpoint's, or a registered model's config) with what the commands
        need: ``input_size`` of :meth:`network`'s input, ``[C, H, W]`` or ``[C, T, H, W]``,
        and the ``mean`` / ``std`` it is normalised with. Default: ``meta`` as it is."""
        return dict(meta)

    def example_size(self, meta: Mapping[str, Any], given: Sequence[int] | None = None) -> list[int]:
        """``[C, *size]`` of an input of :meth:`network`: ``meta["input_size"]``, with its
        height and width replaced by ``given`` (``--input-size H W``, or ``H`` for a square)."""
        size = [int(s) for s in meta["input_size"]]
        hw = input_size_hw(given) if given else None
        return size if hw is None else [*size[:-2], *hw]

    def network(self, model: nn.Module) -> nn.Module:
        """The part of ``model`` that takes one normalised tensor of :meth:`example_size` and
        returns a tensor or a tuple of tensors: what ``tdaf export`` writes, ``tdaf profile``
        counts and ``tdaf attention`` runs. Default: the model itself."""
        return model

    def attention_r2dns(self, model: nn.Module) -> R2DNS | None:
        """The R2DNS whose ANAR maps ``tdaf attention`` draws, or None (a plain model)."""
        found = [m for m in model.modules() if isinstance(m, R2DNS)]
        return found[0] if len(found) == 1 else None

    def attention_items(self, paths: Sequence[str], meta: Mapping[str, Any],
                        person_boxes: str | None = None) -> list[AttentionItem]:
        """The inputs named on ``tdaf attention``'s command line (``meta``: the model's, from
        :meth:`inference_meta`; ``person_boxes``: the ``--person-boxes`` file, given only to
        tasks whose :attr:`attention_person_boxes` is set), checked before anything is
        written. Default: image files and folders of images (recursive), one item each."""
        images = collect_images(paths)
        return [AttentionItem(stem, [path], from_folder)
                for path, from_folder, stem in zip(images.files, images.from_folder, unique_stems(images.files))]

    def attention_input(self, item: AttentionItem, meta: Mapping[str, Any],
                        size: Sequence[int] | None = None) -> torch.Tensor:
        """``item`` read and preprocessed for :meth:`network` as a batch of one (ValueError
        naming the file when it cannot be read). ``size`` (``[C, *size]`` from
        ``--input-size``): resize straight to it instead of the task's preprocessing.
        Default: the image resized to ``meta["input_size"]`` and normalised."""
        img = TF.to_dtype(TF.pil_to_tensor(open_image(item.paths[0])), torch.float32, scale=True)
        hw = [int(s) for s in (size or meta["input_size"])[-2:]]
        x = TF.resize(img, hw, antialias=True)
        return TF.normalize(x, list(meta["mean"]), list(meta["std"]))[None]


def move_to(obj: Any, device: torch.device, memory_format: torch.memory_format | None = None) -> Any:
    """Tensors (in lists, tuples and dicts, recursively) moved to ``device``; 4-D/5-D
    tensors in ``memory_format`` where given (channels-last picks the 3-D variant for 5-D)."""
    if isinstance(obj, torch.Tensor):
        t = obj.to(device, non_blocking=True)
        if memory_format is not None and memory_format != torch.contiguous_format and t.dim() in (4, 5):
            fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
            t = t.contiguous(memory_format=fmt)
        return t
    if isinstance(obj, dict):
        return {k: move_to(v, device, memory_format) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device, memory_format) for v in obj)
    return obj


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Register a task class under its ``name`` (``task:`` in configs); usable as a decorator."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a task needs a name")
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is registered twice")
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    """The registered tasks (importing ``tdaf`` registers the built-in ones)."""
    return sorted(_TASKS)


def get_task(name: str, what: str = "task") -> type[Task]:
    """The task class registered as ``name``; ValueError naming ``what`` otherwise."""
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), list(_TASKS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"{what}: got {name!r}{hint}; allowed: {', '.join(task_names()) or 'none registered'}")
    return _TASKS[name]


def checkpoint_task(payload: dict[str, Any], path: Any, what: str = "--checkpoint") -> Task:
    """The task (an object of its registered class) a checkpoint's payload was trained for
    (classification for checkpoints that do not say)."""
    name = payload.get("task", "classification")
    if name not in _TASKS:
        raise ValueError(f"{what}: {path} is a {name!r} checkpoint, which this version of tdaf cannot run "
                         f"(tasks: {', '.join(task_names())})")
    return _TASKS[name]()


def foreign_flag_error(task: Task, command: str, flag: str, checkpoint: Any) -> ValueError:
    """The error for ``flag`` (an argparse dest) given to ``command`` with a checkpoint of
    ``task``: which task's flag it is, or which flags ``task`` has."""
    option = "--" + flag.replace("_", "-")
    owners = [name for name in task_names() if flag in task_flags(_TASKS[name], command)]
    if owners:
        return ValueError(f"{option}: only for {' and '.join(owners)} checkpoints; {checkpoint} is a {task.name} "
                          f"checkpoint")
    own = ", ".join("--" + a.replace("_", "-") for a in task_flags(task, command)) or "none"
    return ValueError(f"{option}: not an option of {task.name} checkpoints ({checkpoint}); theirs: {own}")


def task_for_config(cfg: Any) -> Task:
    """The task object of a training config (``cfg.task``)."""
    return get_task(cfg.task, "task").from_config(cfg)


def with_task_defaults(cfg: Any, task: Task | type[Task] | None = None) -> Any:
    """``cfg`` with the keys it leaves unset (None) filled from the task's ``defaults``."""
    task = task if task is not None else get_task(cfg.task, "task")
    unset = {k: v for k, v in task.defaults.items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **unset) if unset else cfg


def task_flags(task: type[Task] | Task, command: str) -> tuple[str, ...]:
    """The dests of a task's own flags of ``command`` ("eval" or "predict"), read from its
    ``add_<command>_args`` (the one place they are defined)."""
    group = argparse.ArgumentParser(add_help=False).add_argument_group()
    getattr(task, f"add_{command}_args")(group)
    return tuple(a.dest for a in group._group_actions)
