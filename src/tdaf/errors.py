"""The error for bad input, told apart from bugs.

A :class:`UserError` is raised on purpose where input from the user (a flag, a config value,
a file) is checked and refused; ``tdaf`` prints its message as one line (exit status 2).
Any other exception reaching the command line is a bug in tdaf and is reported as one
(``tdaf.cli.main``). It subclasses ValueError, so ``except ValueError`` keeps catching it.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input, with a message that names the parameter or file, what was given and what is
    allowed (``--threads: got 0; allowed: >= 1``)."""
