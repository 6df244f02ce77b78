"""The ``tdaf`` console script: :func:`tdaf.cli.main.main`, with ``tdaf``, ``tdaf --help``
and ``tdaf --version`` answered before torch is imported.

Importing anything inside the ``tdaf`` package runs ``tdaf/__init__``, which registers every
task and model and so imports torch (seconds). The command list lives in the package
(``tdaf/cli/_commands.py``, standard library only); this launcher runs that one file on its
own for the three answers that need nothing else, and hands every other command line to
``tdaf.cli.main``. It holds no command, option or text of its own, and nothing imports it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _commands_module():  # noqa: ANN202 (a module)
    """``tdaf/cli/_commands.py``, loaded as a standalone module (its package is not imported)."""
    spec = importlib.util.find_spec("tdaf")  # a top-level find_spec runs no package code
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "cli" / "_commands.py"
    if not path.is_file():  # an installation that is not plain files (a zip): take the slow path
        return None
    file_spec = importlib.util.spec_from_file_location("_tdaf_commands", path)
    if file_spec is None or file_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    commands = _commands_module()
    status = commands.answer_without_commands(args) if commands is not None else None
    if status is not None:
        return status
    from tdaf.cli.main import main as run  # torch and the models load here

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
