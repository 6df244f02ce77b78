"""The task-specific parts of the shared commands (``tdaf eval``, ``tdaf predict``).

A checkpoint knows its task; these commands read it and hand over to that task's
``cli`` module (``tdaf.classification.cli``, ...), which provides ``add_eval_args``,
``run_eval``, ``add_predict_args``, ``run_predict`` and the names (argparse dests) of its
own flags in ``EVAL_OPTIONS`` / ``PREDICT_OPTIONS``. Each task's flags appear in their own
group of ``--help``; giving one with another task's checkpoint is an error.
"""

from __future__ import annotations

import argparse
from types import ModuleType

from ..classification import cli as classification_cli
from ..detection import cli as detection_cli
from ..engine.checkpoint import load_checkpoint
from ..pose import cli as pose_cli
from ..video import cli as video_cli

__all__ = ["TASK_COMMANDS", "add_task_args", "run_task_command", "checkpoint_task"]

# task name -> its cli module
TASK_COMMANDS: dict[str, ModuleType] = {
    "classification": classification_cli,
    "detection": detection_cli,
    "pose": pose_cli,
    "video": video_cli,
}


def add_task_args(p: argparse.ArgumentParser, command: str) -> None:
    """Each task's own flags of ``command`` ("eval" or "predict"), in a group per task."""
    for name, module in TASK_COMMANDS.items():
        getattr(module, f"add_{command}_args")(p.add_argument_group(f"{name} checkpoints"))


def checkpoint_task(path: str, what: str = "--checkpoint") -> str:
    """The task a checkpoint was trained for (classification for checkpoints that do not say)."""
    task = load_checkpoint(path, what).get("task", "classification")
    if task not in TASK_COMMANDS:
        raise ValueError(f"{what}: {path} is a {task!r} checkpoint, which this version of tdaf cannot run "
                         f"(tasks: {', '.join(TASK_COMMANDS)})")
    return task


def run_task_command(command: str, args: argparse.Namespace) -> int:
    """Run ``command`` with the cli module of the checkpoint's task, after refusing flags of
    other tasks."""
    task = checkpoint_task(args.checkpoint)
    for name, module in TASK_COMMANDS.items():
        if name == task:
            continue
        for dest in getattr(module, f"{command.upper()}_OPTIONS"):
            if getattr(args, dest, None) not in (None, False):
                raise ValueError(f"--{dest.replace('_', '-')}: only for {name} checkpoints; {args.checkpoint} "
                                 f"is a {task} checkpoint")
    return int(getattr(TASK_COMMANDS[task], f"run_{command}")(args) or 0)
