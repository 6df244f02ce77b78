"""scikit-learn's bundled handwritten digits: the real images every quick start of tdaf uses.

``sklearn.datasets.load_digits()`` ships 1,797 real 8x8 scans of handwritten digits
(UCI "Optical Recognition of Handwritten Digits", 43 writers), values 0..16 with 16 the
ink. They are scaled to 0..255 and upscaled to 32x32 with bilinear interpolation, light
digit on a dark ground, so CIFAR-style models take them unchanged; models get 3
channels (the grey value repeated).

The classification task reads them as a 10-class data set (``--data digits``); other
tasks build their small bundled sets from the same pixels. The split is fixed and
independent of the training seed: a stratified 80/20 split
(``train_test_split(..., test_size=0.2, stratify=labels, random_state=0)``), 1,437
training and 360 test images; ``val`` is the test split.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from ..io.optional import require

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "SPLIT_SEED", "IMAGE_SIZE", "digits_pixels"]

SPLIT_SEED = 0
IMAGE_SIZE = 32
# Per-channel mean/std of the 32x32 training split in [0, 1] (the same for R, G, B):
# computed by ``digits_pixels("train")`` (tests/test_data.py recomputes them).
DIGITS_MEAN = (0.3057, 0.3057, 0.3057)
DIGITS_STD = (0.3235, 0.3235, 0.3235)


@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    datasets = require("sklearn.datasets", "demo", "the bundled handwritten digits (scikit-learn's)")
    load_digits = datasets.load_digits
    train_test_split = require("sklearn.model_selection", "demo", "the digits split").train_test_split

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    big = np.stack([
        np.asarray(Image.fromarray(im, "L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        for im in images
    ])
    labels = bunch.target.astype(np.int64)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=SPLIT_SEED
    )
    return big, labels, (np.sort(train), np.sort(test))


def digits_pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 32, 32) uint8 images and (N,) labels of a split (``train`` or ``val``)."""
    images, labels, (train, test) = _all_digits()
    if split not in ("train", "val"):
        raise ValueError(f"split: got {split!r}; allowed: train, val")
    idx = train if split == "train" else test
    return images[idx], labels[idx]
