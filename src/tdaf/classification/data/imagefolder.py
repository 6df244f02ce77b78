"""Images in class folders, the ImageNet layout (paper §4.1, Tab. 3a)::

    DATA_DIR/train/CLASS/*.jpg
    DATA_DIR/val/CLASS/*.jpg

Class folders are sorted by name to give labels 0..K-1 (torchvision's convention);
``val`` may hold a subset of the training classes. An image that cannot be decoded is
skipped (and counted by the loader) rather than stopping a days-long run; ``--strict``
stops instead.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ...io.files import first_line
from ._base import RawDataset

__all__ = ["ImageFolderDataset", "IMAGEFOLDER_LAYOUT"]

IMAGEFOLDER_LAYOUT = (
    "expected the ImageNet layout: DATA_DIR/train/CLASS/*.jpg and DATA_DIR/val/CLASS/*.jpg "
    f"(one folder per class; extensions {', '.join(IMG_EXTENSIONS)})"
)


def _split_dir(data_dir: str | Path | None, split: str) -> Path:
    if data_dir is None:
        raise ValueError(f"--data-dir: required for imagefolder; {IMAGEFOLDER_LAYOUT}")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"--data-dir: {root} does not exist; {IMAGEFOLDER_LAYOUT}")
    if not root.is_dir():
        raise ValueError(f"--data-dir: {root} is not a folder; {IMAGEFOLDER_LAYOUT}")
    path = root / split
    if not path.is_dir():
        raise FileNotFoundError(f"--data-dir: {root} has no '{split}' folder; {IMAGEFOLDER_LAYOUT}")
    return path


def _classes(path: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(str(path))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--data-dir: {path} has no class folders; {IMAGEFOLDER_LAYOUT}") from e


class ImageFolderDataset(RawDataset):
    """The ``train`` or ``val`` split of an ImageNet-layout folder (labels from ``train``'s class folders)."""

    def __init__(self, data_dir: str | Path | None, split: str = "train") -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split: got {split!r}; allowed: train, val")
        train_classes, class_to_idx = _classes(_split_dir(data_dir, "train"))
        path = _split_dir(data_dir, split)
        if split != "train":
            here, _ = _classes(path)
            extra = sorted(set(here) - set(train_classes))
            if extra:
                raise ValueError(
                    f"--data-dir: {path} has class folders missing from train/: {', '.join(extra[:10])}"
                    f"{' ...' if len(extra) > 10 else ''}; {IMAGEFOLDER_LAYOUT}"
                )
            class_to_idx = {c: class_to_idx[c] for c in here}
        try:
            samples = make_dataset(str(path), class_to_idx, extensions=IMG_EXTENSIONS,
                                   allow_empty=split != "train")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--data-dir: {e}; {IMAGEFOLDER_LAYOUT}") from e
        if not samples:
            raise FileNotFoundError(f"--data-dir: {path} holds no images; {IMAGEFOLDER_LAYOUT}")
        self.samples = samples
        self.classes = train_classes
        self.split = split
        self.root = path

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image | None, int, str]:
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()  # decode now: a truncated file fails here, not in a transform
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return None, label, f"{path} ({first_line(e)})"
        return img, label, path

    def targets(self) -> list[int]:
        return [label for _, label in self.samples]
