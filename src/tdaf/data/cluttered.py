"""Cluttered digits: a real handwritten digit somewhere on a larger canvas among fragments
of other digits, so that finding the digit is the task (the "cluttered" protocol of
Mnih et al. 2014, "Recurrent Models of Visual Attention", which the TDAF paper cites).

Every sample is one of scikit-learn's real digits (:func:`tdaf.data.digits.digits_pixels`,
32x32) scaled to a random size and pasted at a random position on a dark ``size`` x
``size`` canvas, with ``fragments`` square pieces cut from the ink of *other* digits of
the same split pasted at random places (pixel-wise maximum, so clutter may touch or
overlap the digit, as in the original protocol). Training samples come from the training
split and test samples from the test split only, so no test sample shares a source digit
(or a fragment's digit) with a training sample. A source digit gives several samples.

Generation is deterministic: it depends on the split, the sizes and :data:`GENERATION_SEED`,
never on the training seed, so every run and every machine sees the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .digits import digits_pixels

__all__ = ["ClutterSpec", "CLUTTER_DEFAULT", "CLUTTER_SMALL", "GENERATION_SEED", "CLUTTERED_MEAN", "CLUTTERED_STD",
           "CLUTTERED_SMALL_MEAN", "CLUTTERED_SMALL_STD", "cluttered_digits"]

GENERATION_SEED = 20140624  # Mnih et al.'s arXiv date; any fixed number would do
# Per-channel mean/std of the default training split in [0, 1] (tests/test_cluttered.py
# recomputes them).
CLUTTERED_MEAN = (0.1556, 0.1556, 0.1556)
CLUTTERED_STD = (0.2852, 0.2852, 0.2852)


@dataclass(frozen=True)
class ClutterSpec:
    """The geometry of a cluttered-digits split.

    ``size``: the canvas side; ``digit_sizes``: the range the 32x32 digit is scaled to
    (inclusive); ``fragments``: clutter pieces per canvas, each ``fragment_size`` square,
    cut where the other digit has ink; ``counts``: samples per split."""

    size: int = 48
    digit_sizes: tuple[int, int] = (24, 30)
    fragments: int = 6
    fragment_size: int = 7
    train: int = 3000
    val: int = 1000

    def __post_init__(self) -> None:
        lo, hi = self.digit_sizes
        if not 8 <= lo <= hi <= self.size:
            raise ValueError(f"digit_sizes: got {self.digit_sizes}; allowed: 8 <= low <= high <= size={self.size}")
        if not 1 <= self.fragment_size <= 32 or self.fragments < 0:
            raise ValueError(f"fragments, fragment_size: got {self.fragments}, {self.fragment_size}; allowed: "
                             f">= 0 fragments of 1..32 pixels")
        if self.train < 1 or self.val < 1:
            raise ValueError(f"train, val: got {self.train}, {self.val}; allowed: >= 1 sample each")


CLUTTER_DEFAULT = ClutterSpec()
# Small digits in denser clutter: a 16-20 px digit (about a quarter of the side) on 64x64
# among 8 fragments of 8 px (``--data cluttered_digits_small``).
CLUTTER_SMALL = ClutterSpec(size=64, digit_sizes=(16, 20), fragments=8, fragment_size=8)
CLUTTERED_SMALL_MEAN = (0.0885, 0.0885, 0.0885)
CLUTTERED_SMALL_STD = (0.2302, 0.2302, 0.2302)


def _fragment(rng: np.random.Generator, image: np.ndarray, k: int) -> np.ndarray:
    """A k x k piece of ``image`` centred on one of its ink pixels (so it is never empty)."""
    ys, xs = np.nonzero(image > 64)
    i = int(rng.integers(len(ys)))
    n = image.shape[0]
    y0 = int(np.clip(ys[i] - k // 2, 0, n - k))
    x0 = int(np.clip(xs[i] - k // 2, 0, n - k))
    return image[y0:y0 + k, x0:x0 + k]


@lru_cache(maxsize=4)
def cluttered_digits(split: str, spec: ClutterSpec = CLUTTER_DEFAULT) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                np.ndarray]:
    """``(images, labels, sources, boxes)`` of a split: ``(N, S, S)`` uint8 canvases, their
    ``(N,)`` labels, the index of each sample's digit in ``digits_pixels(split)``, and the
    ``(N, 4)`` box ``x0, y0, x1, y1`` (exclusive ends) the digit was pasted into."""
    pixels, labels = digits_pixels(split)  # checks the split name
    count = spec.train if split == "train" else spec.val
    rng = np.random.default_rng([GENERATION_SEED, 0 if split == "train" else 1, spec.size, count])
    s, k = spec.size, spec.fragment_size
    images = np.zeros((count, s, s), np.uint8)
    sources = rng.integers(len(labels), size=count)
    boxes = np.zeros((count, 4), np.int64)
    for n, src in enumerate(sources):
        canvas = images[n]
        for _ in range(spec.fragments):
            other = int(rng.integers(len(labels) - 1))
            other += other >= src  # never the digit itself
            piece = _fragment(rng, pixels[other], k)
            y, x = (int(v) for v in rng.integers(0, s - k + 1, size=2))
            np.maximum(canvas[y:y + k, x:x + k], piece, out=canvas[y:y + k, x:x + k])
        d = int(rng.integers(spec.digit_sizes[0], spec.digit_sizes[1] + 1))
        digit = np.asarray(Image.fromarray(pixels[src], "L").resize((d, d), Image.Resampling.BILINEAR))
        y, x = (int(v) for v in rng.integers(0, s - d + 1, size=2))
        np.maximum(canvas[y:y + d, x:x + d], digit, out=canvas[y:y + d, x:x + d])
        boxes[n] = (x, y, x + d, y + d)
    return images, labels[sources], sources, boxes
