"""``--data digits``: scikit-learn's handwritten digits as a 10-class image data set
(the quick-start data; the pixels and the fixed split come from :mod:`tdaf.data.digits`)."""

from __future__ import annotations

from PIL import Image

from ...data.digits import digits_pixels
from ._base import RawDataset

__all__ = ["DigitsDataset"]


class DigitsDataset(RawDataset):
    """One split of the digits (``train``: 1,437 images, ``val``: 360), as 32x32 greyscale PIL images."""

    def __init__(self, split: str = "train") -> None:
        self.images, self.labels = digits_pixels(split)
        self.split = split
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Image.Image | None, int, str]:
        return Image.fromarray(self.images[index], "L"), int(self.labels[index]), f"digits/{self.split}/{index}"

    def targets(self) -> list[int]:
        return self.labels.tolist()
