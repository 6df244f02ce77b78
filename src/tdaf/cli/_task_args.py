"""The tasks' own flags of ``tdaf eval`` and ``tdaf predict``, found through the task registry.

A checkpoint knows its task; each task adds its flags of a command with
``Task.add_<command>_args`` (in a ``--help`` group of its own), and the command hands the
ones given to the checkpoint's task, which refuses a flag of another task
(:func:`tdaf.engine.task.foreign_flag_error`). The cli names no task.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..engine.task import Task, foreign_flag_error, get_task, task_flags, task_names

__all__ = ["add_task_args", "given_options", "task_options"]


def add_task_args(p: argparse.ArgumentParser, command: str) -> None:
    """Each registered task's own flags of ``command`` ("eval" or "predict"), in a group per task."""
    for name in task_names():
        if task_flags(get_task(name), command):
            getattr(get_task(name), f"add_{command}_args")(p.add_argument_group(f"{name} checkpoints"))


def given_options(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every task's flags of ``command`` given on the command line (by dest; a flag that was not
    given is None or False): the checkpoint's task refuses those that are not its own."""
    return {dest: value for name in task_names() for dest in task_flags(get_task(name), command)
            if (value := getattr(args, dest, None)) not in (None, False)}


def task_options(args: argparse.Namespace, command: str, task: Task, checkpoint: str) -> dict[str, Any]:
    """The flags of ``task`` given on the command line (by dest), after refusing those of
    other tasks."""
    own = task_flags(task, command)
    for dest in given_options(args, command):
        if dest not in own:
            raise foreign_flag_error(task, command, dest, checkpoint)
    return {dest: getattr(args, dest, None) for dest in own}
