"""The one rule for every file a command writes (``tdaf.io.Outputs``).

A command never writes over an input of its run (images, videos, checkpoints,
annotations, configs), and never over an existing file it did not create in this run
unless ``--overwrite`` says so (an input stays protected even then). Every output is
claimed, by name, before the work starts, so a clash is refused before minutes of work;
the files are then written to temporaries beside their targets and renamed into place
only when the whole run succeeded: a failure (an error, Ctrl-C, SIGTERM) leaves neither
a partial file nor a folder the run created, and what ``kill -9`` leaves is a
``.NAME.*.tmp`` temporary that :func:`tdaf.io.files.clean_stale_temporaries` removes.

Typical use::

    outputs = Outputs(overwrite=args.overwrite)
    outputs.protect(images.files, "image")
    outputs.protect([args.checkpoint], "checkpoint")
    target = outputs.claim(Path(args.out_dir) / f"{stem}_pred.png", "--out-dir")   # checks only
    with outputs:                                                                  # commit on success
        ... work ...
        outputs.save_image(picture, target)

This module imports nothing from tdaf beyond :mod:`tdaf.io.files`.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..errors import UserError
from .files import TEMP_SUFFIX, deferred_interrupts, first_line, probe_writable

__all__ = ["Outputs", "output_name"]

def output_name(stem: str, kind: str, ext: str = ".png") -> str:
    """``<stem>_<kind><ext>``: the name of an output drawn from the input ``stem``
    (``photo`` -> ``photo_pred.png``), never the input's own name."""
    return f"{stem}_{kind}{ext}"


def _key(path: Path) -> Path:
    """A path's identity: absolute, symlinks and ``..`` resolved (the file need not exist)."""
    return Path(os.path.realpath(path.expanduser()))


class Outputs:
    """The files one run of a command writes: claimed (checked) first, written atomically
    (staged, then renamed) when the work succeeded. Use as a context manager: leaving it
    normally commits every staged file, an exception discards them."""

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._inputs: dict[Path, tuple[str, Path]] = {}  # identity -> (role, path as given)
        self._claimed: dict[Path, tuple[str, Path]] = {}  # identity -> (flag, target)
        self._staged: dict[Path, str] = {}  # target -> its temporary
        self._made: list[Path] = []  # folders this run created (removed again if it fails)
        self._writable: set[Path] = set()  # folders where a probe file could be written
        self.written: list[Path] = []

    # ------------------------------------------------------------------ inputs
    def protect(self, paths: Iterable[str | os.PathLike[str] | None], role: str) -> None:
        """Mark ``paths`` (files of the run's input; None is ignored) as never to be written,
        ``role`` naming them in errors (``"checkpoint"``, ``"image"``, ``"annotations"``, ...)."""
        for p in paths:
            if p is None:
                continue
            path = Path(p).expanduser()
            self._inputs.setdefault(_key(path), (role, path))
            try:  # hard links and bind mounts: the same file under another name
                if path.is_file():
                    st = path.stat()
                    self._inputs.setdefault(Path(f"inode:{st.st_dev}:{st.st_ino}"), (role, path))
            except OSError:
                pass

    def _input_of(self, path: Path) -> tuple[str, Path] | None:
        hit = self._inputs.get(_key(path))
        if hit is None:
            try:
                if path.is_file():
                    st = path.stat()
                    hit = self._inputs.get(Path(f"inode:{st.st_dev}:{st.st_ino}"))
            except OSError:
                pass
        return hit

    # ------------------------------------------------------------------ outputs
    def claim(self, path: str | os.PathLike[str], what: str) -> Path:
        """Check now that ``path`` may be written by this run and reserve it; ``what`` (the
        flag that chose it) names it in the error. Refused: an input of the run (even with
        ``--overwrite``), a folder, a path below a file, a folder that cannot be written,
        an existing file without ``--overwrite``, a name claimed twice. Creates nothing."""
        p = Path(path).expanduser()
        key = _key(p)
        hit = self._input_of(p)
        if hit is not None:
            role, given = hit
            alias = "" if _key(given) == key and str(given) == str(p) else f" ({given})"
            raise UserError(f"{what}: {p} is the input {role}{alias} of this run; tdaf never writes over its "
                            f"inputs, even with --overwrite: choose another file or folder")
        if key in self._claimed:
            raise UserError(f"{what}: {p} would be written twice in this run (also as {self._claimed[key][0]})")
        if p.is_dir():
            raise UserError(f"{what}: {p} is a folder; expected a file name")
        if p.exists() and not self.overwrite:
            raise UserError(f"{what}: {p} already exists; pass --overwrite to replace it (this run did not "
                            f"write it), or choose another name")
        self._check_folder(p.parent, what)
        self._claimed[key] = (what, p)
        return p

    def claim_dir(self, folder: str | os.PathLike[str], what: str) -> Path:
        """Check that ``folder`` is, or can become, a writable folder (nothing is created
        until a file in it is committed)."""
        p = Path(folder).expanduser()
        self._check_folder(p, what)
        return p

    def _check_folder(self, folder: Path, what: str) -> None:
        """``folder`` is a folder or can be created, and a file can be written in it: a probe
        file is created and removed in the nearest existing folder (``os.access`` says yes to
        root even where the file system says no)."""
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{what}: {folder} is a file, expected a folder (or a path where one can be created)")
        for q in (folder, *folder.parents):
            if not q.exists():
                continue
            if not q.is_dir():
                raise UserError(f"{what}: cannot create {folder}: {q} is a file, not a folder")
            if _key(q) in self._writable:
                return
            probe_writable(q, folder, what)
            self._writable.add(_key(q))
            return

    def claimed(self, path: str | os.PathLike[str]) -> bool:
        return _key(Path(path)) in self._claimed

    def _target(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path).expanduser()
        if _key(p) not in self._claimed:
            raise RuntimeError(f"{p}: written without being claimed first (a bug in tdaf: please report it)")
        return p

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        for q in (folder, *folder.parents):
            if q.exists():
                break
            missing.append(q)
        for q in reversed(missing):
            q.mkdir()
            self._made.append(q)

    def stage(self, path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
        """Write a claimed file's content now, to a temporary beside it; it gets its name at
        :meth:`commit`. ``write(f)`` writes to a binary file object. Returns the target."""
        p = self._target(path)
        try:
            self._mkdirs(p.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=TEMP_SUFFIX, dir=p.parent)
        except OSError as e:
            raise OSError(e.errno, e.strerror or first_line(e), str(p)) from e
        old = self._staged.pop(p, None)
        if old is not None:
            _unlink(old)
        self._staged[p] = tmp
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OSError(e.errno, e.strerror or first_line(e), str(p)) from e
        return p

    def temporary(self, path: str | os.PathLike[str]) -> Path:
        """A temporary file name beside the claimed ``path`` for a writer that wants a path
        (ONNX, TorchScript); it becomes ``path`` at :meth:`commit`."""
        return Path(self._staged[self.stage(path, lambda f: None)])

    def write_text(self, text: str, path: str | os.PathLike[str]) -> Path:
        return self.stage(path, lambda f: f.write(text.encode()))

    def save_image(self, image: Any, path: str | os.PathLike[str]) -> Path:
        """A PIL image, in the format of the target's suffix."""
        p = Path(path)
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(p.suffix.lower(), p.suffix.lstrip(".").upper() or "PNG")
        return self.stage(p, lambda f: image.save(f, format=fmt))

    def save_with(self, path: str | os.PathLike[str], save: Callable[[IO[bytes]], Any]) -> Path:
        """Any writer taking a file object (``fig.savefig``, ``np.save``, ``torch.save``)."""
        def write(f: IO[bytes]) -> None:
            buf = io.BytesIO()  # some writers seek, or close the file they are given
            save(buf)
            f.write(buf.getvalue())
        return self.stage(path, write)

    # ------------------------------------------------------------------ the end
    def commit(self) -> list[Path]:
        """Rename every staged file onto its target (interrupts held until all are in place)."""
        with deferred_interrupts():
            for p, tmp in list(self._staged.items()):
                try:
                    os.replace(tmp, p)
                except OSError as e:  # name the user's file, not the temporary
                    raise OSError(e.errno, e.strerror or first_line(e), str(p)) from e
                del self._staged[p]
                self.written.append(p)
        self._made.clear()
        return self.written

    def discard(self) -> None:
        """Remove every staged temporary and the folders this run created (when empty)."""
        for tmp in self._staged.values():
            _unlink(tmp)
        self._staged.clear()
        for q in reversed(self._made):
            try:
                q.rmdir()
            except OSError:
                pass
        self._made.clear()

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
