"""Files on disk, below every other part of tdaf: safe loading, atomic saving, writable folders.

Opening a file never runs code from it: everything loads with
``torch.load(..., weights_only=True)`` (or safetensors), and a pickle that asks for more
is refused with a clear error. Saving writes a temporary file in the same folder, syncs
it and renames it over the target, so an interrupted save never destroys the last good
file; temporaries left by a killed process are removed by :func:`clean_stale_temporaries`.

This module imports nothing from tdaf, so models, the engine and the commands can all
use it.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

__all__ = [
    "safe_load", "load_state_dict_file", "atomic_save", "atomic_write_text", "ensure_writable_dir",
    "clean_stale_temporaries", "first_line", "TEMP_SUFFIX", "deferred_interrupts", "json_safe",
]

_DEFERRED = (signal.SIGINT, signal.SIGTERM)

TEMP_SUFFIX = ".tmp"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinity (which are not JSON) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none
    (``EOFError()`` from an empty file has no message)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def safe_load(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """Load a torch file with ``weights_only=True``; clear errors for every failure.

    ``what`` names the parameter or role of the file in error messages.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: file not found: {p}")
    if p.is_dir():
        raise UserError(f"{what}: {p} is a directory, expected a file")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise UserError(f"{what}: cannot read {p} ({first_line(e)})") from e
    if size == 0:
        raise UserError(f"{what}: {p} is empty (0 bytes): a save was interrupted or the file was truncated")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file  # optional dependency, only for this format

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise UserError(f"{what}: {p} is not a readable safetensors file ({first_line(e)})") from e
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "global" in message.lower():
            # A well-formed pickle that names functions or classes beyond tensors and plain
            # containers: the weights_only unpickler refused to import them.
            detail = next((ln.strip() for ln in message.splitlines() if "global" in ln.lower()), first_line(e))
            raise UserError(
                f"{what}: refused to load {p}: it contains Python objects beyond tensors and plain containers, "
                f"and loading it could run code from the file (weights_only=True). Re-save it as a plain "
                f"state dict. Details: {detail}"
            ) from e
        detail = next((ln.strip() for ln in message.splitlines() if "Unsupported" in ln), first_line(e))
        raise UserError(f"{what}: {p} is not a PyTorch file (not a pickle torch can read: {detail})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as e:
        raise UserError(f"{what}: {p} is truncated or not a PyTorch file ({first_line(e)})") from e


def load_state_dict_file(path: str | os.PathLike[str], what: str = "pretrained") -> dict[str, torch.Tensor]:
    """A state dict from a file: a bare state dict, or one nested under ``state_dict``,
    ``model`` or ``model_state_dict`` (``module.`` prefixes from DDP are removed)."""
    obj = safe_load(path, what)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{what}: {path} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _temp_prefix(name: str) -> str:
    return f".{name}."


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them.

    A save interrupted halfway leaves nothing broken (the target is replaced by a rename),
    but the interrupt would surface as an error from deep inside ``torch.save``; deferring
    it lets the save finish and the program then stop cleanly ("interrupted"). Outside the
    main thread, signals cannot be handled and the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in _DEFERRED}
    for sig in _DEFERRED:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


def _atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    with deferred_interrupts():
        return _atomic_write_now(path, write)


def _atomic_write_now(path: str | os.PathLike[str], write: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(p.name), suffix=TEMP_SUFFIX, dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        # Also on KeyboardInterrupt / SystemExit (SIGINT, SIGTERM): no half-written leftovers.
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # e.g. a full disk: say which file failed
            raise OSError(e.errno, e.strerror or str(e), str(p)) from e
        raise
    return p


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write a text file atomically (a reader sees the old or the new content, never half)."""
    return _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write a binary file (a picture, ...) atomically."""
    return _atomic_write(path, lambda f: f.write(data))


@contextmanager
def staged_dir(root: Path) -> Iterator[Path]:
    """A new folder written whole, then renamed onto ``root`` (absent or empty), so a reader
    never sees half of it; on any error the partial folder is removed."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        yield tmp
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale_temporaries(folder: str | os.PathLike[str], older_than_s: float = 0.0) -> list[Path]:
    """Remove the temporaries of :func:`atomic_save` (``.NAME.*.tmp``) that a killed process
    left in ``folder``; returns the removed paths. Call it before a run starts writing
    there (a live writer's temporary is younger than ``older_than_s``)."""
    removed = []
    p = Path(folder)
    if not p.is_dir():
        return removed
    now = time.time()
    for f in p.iterdir():
        if f.name.startswith(".") and f.name.endswith(TEMP_SUFFIX) and f.is_file():
            try:
                if now - f.stat().st_mtime >= older_than_s:
                    f.unlink()
                    removed.append(f)
            except OSError:
                pass
    return removed


def ensure_writable_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Create ``path`` if needed and check that files can be written in it, before any
    long work starts. ValueError naming ``what`` when it is a file, lies below a file, or
    cannot be written."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what}: {p} is a file, expected a folder (or a path where one can be created)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what}: cannot create {p}: {parent} is a file, not a folder")
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what}: cannot write in {p} ({_os_reason(e)})") from e
    probe_writable(p, p, what)
    return p


def _os_reason(e: OSError) -> str:
    return {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system"}.get(e.errno or 0, first_line(e))


def probe_writable(folder: Path, shown: Path, what: str) -> None:
    """Write and remove a probe file in the existing ``folder``; ValueError naming ``what``
    and ``shown`` (the folder the user asked for) when that fails."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{what}: cannot write in {shown} ({_os_reason(e)})") from e
