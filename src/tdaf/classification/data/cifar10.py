"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder (Krizhevsky 2009), paper §4.1, Tab. 2.

Layout (as unpacked from ``cifar-10-python.tar.gz``)::

    cifar-10-batches-py/
        batches.meta                  {"label_names": [10 names], ...}
        data_batch_1 ... data_batch_5 {"data": uint8 (10000, 3072), "labels": [10000 ints], ...}
        test_batch                    the same, 10,000 test images

Each row of ``data`` is a 32x32 RGB image stored as three 1024-byte planes (R, G, B),
row-major. The batches are Python pickles; they are read with an unpickler that only
admits numpy arrays and plain containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._base import RawDataset

__all__ = ["Cifar10Dataset", "CIFAR10_LAYOUT", "find_cifar10_root", "read_cifar_pickle"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
FOLDER = "cifar-10-batches-py"
CIFAR10_LAYOUT = (
    "expected the CIFAR-10 python layout: --data-dir is a folder 'cifar-10-batches-py' (or its parent) "
    "holding batches.meta, data_batch_1 ... data_batch_5 and test_batch, as unpacked from "
    "cifar-10-python.tar.gz"
)


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds: numpy arrays, dtypes and bytes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            return np._core.multiarray._reconstruct  # type: ignore[attr-defined]
        if (module, name) in (("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")):
            return np._core.multiarray.scalar  # type: ignore[attr-defined]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3 with protocol 2
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and plain data)")


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR batch file as a dict with str keys (the originals are Python 2 pickles)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"--data-dir: {path} is not a readable CIFAR batch ({e}); {CIFAR10_LAYOUT}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"--data-dir: {path} holds a {type(obj).__name__}, not a dict; {CIFAR10_LAYOUT}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def find_cifar10_root(data_dir: str | Path | None) -> Path:
    """The ``cifar-10-batches-py`` folder: ``data_dir`` itself or its child of that name."""
    if data_dir is None:
        raise ValueError(f"--data-dir: required for cifar10 (nothing is downloaded); {CIFAR10_LAYOUT}")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"--data-dir: {root} does not exist; {CIFAR10_LAYOUT}")
    if not root.is_dir():
        raise ValueError(f"--data-dir: {root} is not a folder; {CIFAR10_LAYOUT}")
    if not (root / META_FILE).exists() and (root / FOLDER).is_dir():
        root = root / FOLDER
    missing = [n for n in (META_FILE, *TRAIN_FILES, *TEST_FILES) if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"--data-dir: {root} lacks {', '.join(missing)}; {CIFAR10_LAYOUT}")
    return root


class Cifar10Dataset(RawDataset):
    """The CIFAR-10 ``train`` (50,000) or ``val`` (the 10,000 test images) split, as RGB PIL images."""

    def __init__(self, data_dir: str | Path | None, split: str = "train") -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split: got {split!r}; allowed: train, val")
        root = find_cifar10_root(data_dir)
        meta = read_cifar_pickle(root / META_FILE)
        names = meta.get("label_names")
        if not isinstance(names, list) or not names:
            raise ValueError(f"--data-dir: {root / META_FILE} has no 'label_names' list; {CIFAR10_LAYOUT}")
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        images, labels = [], []
        for name in TRAIN_FILES if split == "train" else TEST_FILES:
            data, lab = self._read_batch(root / name)
            images.append(data)
            labels.append(lab)
        self.images = np.concatenate(images)
        self.labels = np.concatenate(labels)
        self.split = split
        self.root = root

    def _read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        batch = read_cifar_pickle(path)
        data, labels = batch.get("data"), batch.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"--data-dir: {path}: 'data' must be a uint8 array (N, 3072), found {found}; "
                             f"{CIFAR10_LAYOUT}")
        try:
            labels = np.asarray(labels, dtype=np.int64) if isinstance(labels, (list, np.ndarray)) else None
        except (ValueError, TypeError) as e:
            raise ValueError(f"--data-dir: {path}: 'labels' must be integers 0..{len(self.classes) - 1} "
                             f"({e}); {CIFAR10_LAYOUT}") from e
        if labels is None or labels.shape != (data.shape[0],):
            raise ValueError(f"--data-dir: {path}: 'labels' must list one label per row of 'data'; {CIFAR10_LAYOUT}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"--data-dir: {path}: labels outside 0..{len(self.classes) - 1}; {CIFAR10_LAYOUT}")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Image.Image | None, int, str]:
        return Image.fromarray(self.images[index], "RGB"), int(self.labels[index]), f"{self.root}:{self.split}/{index}"

    def targets(self) -> list[int]:
        return self.labels.tolist()
