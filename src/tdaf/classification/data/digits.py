"""``--data digits``: scikit-learn's handwritten digits as a 10-class image data set
(the quick-start data; the pixels and the fixed split come from :mod:`tdaf.data.digits`);
``--data cluttered_digits``: the same digits on 48x48 canvases among fragments of other
digits (the main job's data; :mod:`tdaf.data.cluttered`)."""

from __future__ import annotations

from PIL import Image

from ...data.cluttered import CLUTTER_DEFAULT, ClutterSpec, cluttered_digits
from ...data.digits import digits_pixels
from ._base import RawDataset

__all__ = ["DigitsDataset", "ClutteredDigitsDataset"]


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


class ClutteredDigitsDataset(DigitsDataset):
    """One split of the cluttered digits (``train``: 3,000 canvases from the 1,437 training
    digits, ``val``: 1,000 from the 360 test digits), as greyscale PIL images (48x48 with
    the default ``spec``). ``object_boxes`` says where each digit is."""

    def __init__(self, split: str = "train", spec: ClutterSpec = CLUTTER_DEFAULT, name: str = "cluttered_digits") -> None:
        self.images, self.labels, _, self.boxes = cluttered_digits(split, spec)
        self.split = split
        self.name = name
        self.classes = [str(i) for i in range(10)]

    def load(self, index: int) -> tuple[Image.Image | None, int, str]:
        image = Image.fromarray(self.images[index], "L")
        return image, int(self.labels[index]), f"{self.name}/{self.split}/{index}"

    def object_boxes(self, index: int) -> tuple[tuple[int, int], list[list[float]]]:
        """``((width, height), [[x0, y0, x1, y1]])``: the canvas and the digit's box in it."""
        h, w = self.images.shape[1:]
        return (w, h), [[float(v) for v in self.boxes[index]]]
