"""Progress that a log file can hold: a tqdm bar on a terminal, plain lines elsewhere.

tqdm redraws its bar with carriage returns even when stderr is a file or a pipe, so
``tdaf demo > log.txt 2>&1`` used to write lines of a hundred frames each. Every tdaf
loop asks :func:`progress_bar` instead: on a terminal (or when forced with
``--progress``) it is tqdm; elsewhere (a file, a pipe, CI, the non-zero ranks of
``torchrun``) it logs one plain line every ``every`` updates and one at the end, with
the same figures (count, rate, the ``set_postfix`` values). ``enabled=False``
(``--no-progress``) shows nothing.

This module imports nothing from tdaf, so every layer can use it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Protocol, TypeVar

__all__ = ["Progress", "PlainProgress", "progress_bar", "track", "use_bars", "DEFAULT_LINES"]

log = logging.getLogger("tdaf.progress")
T = TypeVar("T")

# With no ``every``: about this many lines for a loop of known length (plus the closing one).
DEFAULT_LINES = 4
_UNKNOWN_TOTAL_EVERY = 100


class Progress(Protocol):
    """What tdaf's loops call on a bar: tqdm's ``update``, ``set_postfix``, ``write`` and ``close``."""

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> Any: ...
    def write(self, message: str) -> Any: ...
    def close(self) -> Any: ...


def _is_other_rank() -> bool:
    """True on a process that ``torchrun`` started with a non-zero rank."""
    for key in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(key, "0")
        if value.strip().isdigit() and int(value) != 0:
            return True
    return False


def _isatty(file: IO[str] | None) -> bool:
    try:
        return file is not None and file.isatty()
    except (AttributeError, ValueError):  # closed or replaced by an object without isatty
        return False


def use_bars(enabled: bool | None, file: IO[str] | None = None) -> bool | None:
    """How ``enabled`` resolves here: True (a tqdm bar), None (plain lines), False (nothing).
    ``enabled=None`` ("auto", the commands' default) is a bar only when ``file`` (stderr)
    is a terminal, and nothing at all on ``torchrun``'s non-zero ranks."""
    if enabled is True:
        return True
    if enabled is False:
        return False
    if enabled is not None:
        raise TypeError(f"progress: got {enabled!r}; allowed: True (bars), False (nothing) or None (auto)")
    if _is_other_rank():
        return False
    return True if _isatty(sys.stderr if file is None else file) else None


class PlainProgress:
    """A bar's stand-in for a log file: ``desc: n/total unit (pct%), rate, elapsed, postfix``
    every ``every`` updates and once at :meth:`close` (when anything happened since the
    last line). Lines go to the ``tdaf.progress`` logger, as the commands' other lines do."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", every: int | None = None,
                 silent: bool = False) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every: got {every!r}; allowed: an integer >= 1 (updates between lines) or None")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.every = every if every is not None else (
            max(1, math.ceil(total / DEFAULT_LINES)) if total else _UNKNOWN_TOTAL_EVERY)
        self.silent = silent
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._logged_at = 0
        self._due = False
        self._closed = False

    def update(self, n: int = 1) -> None:
        if self._due:
            self._line()
        before = self.n
        self.n += n
        if self.n // self.every > before // self.every:
            # A loop that sets figures does so after its update (as for tqdm): the line waits for them.
            self._due = True
            if not self.postfix:
                self._line()

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**dict(ordered_dict or {}), **kwargs}
        if self._due:
            self._line()

    def write(self, message: str) -> None:
        if not self.silent:
            log.info("%s", message)

    def close(self) -> None:
        if not self._closed and self.n != self._logged_at:
            self._line()
        self._closed = True

    def line(self) -> str:
        """The current figures as one line (what :meth:`update` and :meth:`close` log)."""
        elapsed = time.perf_counter() - self._start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        figures = "".join(f", {k}={v}" for k, v in self.postfix.items())
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{count} {self.unit}{pct}{rate}, {elapsed:.1f} s{figures}"

    def _line(self) -> None:
        self._logged_at, self._due = self.n, False
        if not self.silent:
            log.info("%s", self.line())

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool | None = None,
                 every: int | None = None, file: IO[str] | None = None, leave: bool = False) -> Progress:
    """A progress bar for a loop of ``total`` updates (None: unknown).

    ``enabled``: None (the default, "auto"): a tqdm bar when ``file`` (default stderr) is a
    terminal, else plain lines every ``every`` updates (default: about
    :data:`DEFAULT_LINES` per loop) and at ``close``; True: a tqdm bar wherever the output
    goes (``--progress``); False: nothing (``--no-progress``, a non-main process).
    """
    mode = use_bars(enabled, file)
    if mode:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc or None, unit=unit, file=sys.stderr if file is None else file,
                    dynamic_ncols=True, leave=leave)
    return PlainProgress(total, desc, unit, every, silent=mode is False)


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool | None = None, every: int | None = None, file: IO[str] | None = None) -> Iterator[T]:
    """``iterable``'s items, counted on a :func:`progress_bar` (tqdm's ``tqdm(iterable)``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = progress_bar(total, desc, unit, enabled, every, file)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()
