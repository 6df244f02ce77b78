"""Optional dependencies: each feature that needs one imports it through :func:`require`,
so a missing package is one clear line naming the ``pip install 'tdaf[extra]'`` to run."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require", "MissingDependency"]


class MissingDependency(ImportError):
    """An optional package a feature needs is not installed (the message says which extra)."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``import module``; MissingDependency naming ``feature`` and the extra otherwise."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise MissingDependency(
            f"{feature} needs the Python package {package!r}, which is not installed here: "
            f"pip install 'tdaf[{extra}]'"
        ) from e
