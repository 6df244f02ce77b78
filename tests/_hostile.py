"""What the hostile-input tests share: file hashes before and after, code-running pickles,
truncated files, and tiny checkpoints of every task (built by ``conftest.py``'s
session fixtures with the smallest models and one short epoch).

A new command inherits the rules by adding itself to the lists in ``test_hostile_*.py``.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import tdaf
from tdaf.cli.main import main
from tdaf.engine.checkpoint import checkpoint_payload
from tdaf.io.files import atomic_save


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hashes(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (files or folders) and its SHA-256."""
    out = {}
    for root in roots:
        root = Path(root)
        files: Iterable[Path] = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = sha(f)
    return out


def run(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    """``tdaf ARGV`` as a user runs it: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, *needles: str) -> str:
    """The command's single error line, checked to contain every needle."""
    text = err.strip()
    lines = [ln for ln in text.splitlines() if ln.startswith("tdaf ")]
    assert len(lines) == 1 and "Traceback" not in text, text
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


class Marker:
    """Unpickling this touches ``path``: proof that a file ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.path,))


def evil_checkpoint(path: Path, marker: Path, task: str) -> Path:
    """A checkpoint-shaped file of ``task`` whose unpickling would run code (touch ``marker``)."""
    payload = {"task": task, "model_name": "resnet18_cifar", "state_dict": {"w": torch.zeros(1)},
               "meta": {"x": Marker(marker)}}
    with open(path, "wb") as f:
        torch.save(payload, f, pickle_module=pickle)
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def classification_checkpoint(folder: Path, name: str = "cls.pt", num_classes: int = 10,
                              class_names: list[str] | None = None, state: dict | None = None,
                              model_name: str = "resnet18_cifar") -> Path:
    """An untrained classifier saved as ``tdaf train`` saves it (8x8 digits preprocessing)."""
    model = tdaf.create_model(model_name, num_classes=num_classes)
    meta = {"class_names": class_names if class_names is not None else [str(i) for i in range(num_classes)],
            "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [3, 8, 8], "resize": None, "data": "digits"}
    path = Path(folder) / name
    atomic_save(checkpoint_payload(model_name, {"num_classes": num_classes},
                                   state if state is not None else model.state_dict(), meta), path)
    return path


def photos(folder: Path, n: int = 2, size: tuple[int, int] = (64, 48), extra: dict[str, bytes] | None = None) -> Path:
    """A folder of ``n`` PNG photos (random pixels), plus ``extra`` files by name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"photo{i}.png")
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return folder
