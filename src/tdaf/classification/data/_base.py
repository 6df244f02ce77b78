"""The small interface every data set of ``tdaf.data`` implements."""

from __future__ import annotations

from PIL import Image

__all__ = ["RawDataset"]


class RawDataset:
    """A split of an image data set before any transform.

    ``load(i)`` returns ``(PIL image or None, label, path)``: None when the file cannot
    be decoded (the path then ends with the reason in parentheses), so the loader can
    skip it and count it instead of stopping a long run.
    ``classes`` names the labels 0..K-1.
    """

    classes: list[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[Image.Image | None, int, str]:
        raise NotImplementedError

    def targets(self) -> list[int]:
        """All labels, in order (used for class counts; may read only an index)."""
        return [self.load(i)[1] for i in range(len(self))]
