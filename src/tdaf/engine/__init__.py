"""The machinery every task shares: the task interface, the trainer, evaluation,
checkpoints, configs, logs and multi-process training.

The engine names no task: tasks (``tdaf.classification``, ...) implement
:class:`tdaf.engine.task.Task` and register themselves.
"""
