"""The main job's data: cluttered digits are deterministic, test canvases use test digits
only, each digit sits exactly in its recorded box, and the stated statistics are true."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tdaf.data.cluttered import CLUTTERED_MEAN, CLUTTERED_STD, ClutterSpec, cluttered_digits
from tdaf.data.digits import digits_pixels

SMALL = ClutterSpec(size=40, digit_sizes=(14, 20), fragments=5, fragment_size=7, train=60, val=30)


def test_generation_is_deterministic_and_split_dependent():
    a = cluttered_digits("val", SMALL)
    cluttered_digits.cache_clear()
    b = cluttered_digits("val", SMALL)
    for x, y in zip(a, b):
        assert x is not y and np.array_equal(x, y)
    assert a[0].shape == (30, 40, 40) and a[0].dtype == np.uint8
    assert not np.array_equal(cluttered_digits("train", SMALL)[0][:30], a[0])


@pytest.mark.parametrize("split", ["train", "val"])
def test_each_digit_is_pasted_in_its_box(split):
    images, labels, sources, boxes = cluttered_digits(split, SMALL)
    pixels, source_labels = digits_pixels(split)
    assert np.array_equal(labels, source_labels[sources])
    for image, src, (x0, y0, x1, y1) in zip(images, sources, boxes):
        d = x1 - x0
        assert d == y1 - y0 and SMALL.digit_sizes[0] <= d <= SMALL.digit_sizes[1]
        digit = np.asarray(Image.fromarray(pixels[src], "L").resize((d, d), Image.Resampling.BILINEAR))
        # the canvas is the pixel-wise maximum of the digit and the clutter
        assert (image[y0:y1, x0:x1] >= digit).all()
        assert (image[y0:y1, x0:x1] == digit)[digit > 0].mean() > 0.5
    # clutter exists outside the boxes
    outside = images.copy()
    for image, (x0, y0, x1, y1) in zip(outside, boxes):
        image[y0:y1, x0:x1] = 0
    assert (outside.reshape(len(images), -1).max(1) > 64).all()


def test_test_canvases_never_share_a_digit_with_training_canvases():
    train_px, _ = digits_pixels("train")
    val_px, _ = digits_pixels("val")
    train_keys = {p.tobytes() for p in train_px}
    _, _, sources, _ = cluttered_digits("val", SMALL)
    assert not any(val_px[s].tobytes() in train_keys for s in set(sources.tolist()))


def test_default_split_sizes_and_statistics():
    images, labels, _, _ = cluttered_digits("train")
    assert images.shape == (3000, 48, 48) and set(labels.tolist()) == set(range(10))
    assert len(cluttered_digits("val")[0]) == 1000
    x = images / 255.0
    assert x.mean() == pytest.approx(CLUTTERED_MEAN[0], abs=5e-5)
    assert x.std() == pytest.approx(CLUTTERED_STD[0], abs=5e-5)


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="digit_sizes"):
        ClutterSpec(size=32, digit_sizes=(20, 40))
