"""The tasks' own flags of ``tdaf eval`` and ``tdaf predict``, found through the task registry.

A checkpoint knows its task; each task adds its flags of a command with
``Task.add_<command>_args`` (in a ``--help`` group of its own), and the command hands the
ones given to the checkpoint's task. A flag of another task is refused. The cli names no task.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..engine.checkpoint import load_checkpoint
from ..engine.task import Task, get_task, task_flags, task_names

__all__ = ["add_task_args", "checkpoint_task", "task_options"]


def add_task_args(p: argparse.ArgumentParser, command: str) -> None:
    """Each registered task's own flags of ``command`` ("eval" or "predict"), in a group per task."""
    for name in task_names():
        if task_flags(get_task(name), command):
            getattr(get_task(name), f"add_{command}_args")(p.add_argument_group(f"{name} checkpoints"))


def checkpoint_task(path: str, what: str = "--checkpoint") -> Task:
    """The task (an object of its registered class) a checkpoint was trained for
    (classification for checkpoints that do not say)."""
    name = load_checkpoint(path, what).get("task", "classification")
    if name not in task_names():
        raise ValueError(f"{what}: {path} is a {name!r} checkpoint, which this version of tdaf cannot run "
                         f"(tasks: {', '.join(task_names())})")
    return get_task(name)()


def task_options(args: argparse.Namespace, command: str, task: Task) -> dict[str, Any]:
    """The flags of ``task`` given on the command line (by dest), after refusing those of
    other tasks (their flags default to None; a flag given is neither None nor False)."""
    own = task_flags(task, command)
    for name in task_names():
        for dest in task_flags(get_task(name), command):
            if dest not in own and getattr(args, dest, None) not in (None, False):
                raise ValueError(f"--{dest.replace('_', '-')}: only for {name} checkpoints; {args.checkpoint} "
                                 f"is a {task.name} checkpoint")
    return {dest: getattr(args, dest, None) for dest in own}
