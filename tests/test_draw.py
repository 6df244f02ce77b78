"""tdaf.draw: boxes with readable, non-overlapping labels on upscaled small images, COCO's
per-limb skeleton colours, and the labelled attention strip; all deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tdaf.draw import (
    COCO_KEYPOINT_NAMES, PALETTE, attention_strip, class_colour, default_font, draw_boxes, draw_skeletons, jet,
    keypoint_colour, limb_colour, place_labels, upscale,
)

GREEN, ORANGE, BLUE = (0, 255, 0), (255, 128, 0), (51, 153, 255)
COCO_SKELETON = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]


def _scene() -> Image.Image:
    a = np.zeros((64, 64), np.uint8)
    a[20:44, 8:32] = 200  # one "digit" with three stacked boxes around it
    return Image.fromarray(a, "L")


STACK = [[9, 21, 31, 43], [8, 20, 32, 44], [10, 22, 30, 42]]


def _intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_upscale_small_images_by_an_integer_nearest_factor():
    img, f = upscale(_scene(), 512)
    assert (f, img.size, img.mode) == (8, (512, 512), "RGB")
    # every input pixel is an exact 8x8 block (nearest): the digit's corner lands on (8*8, 20*8)
    a = np.asarray(img)
    assert (a[160, 64] == 200).all() and (a[159, 64] == 0).all() and (a[160, 63] == 0).all()
    big, f = upscale(Image.new("RGB", (800, 600)), 512)
    assert f == 1 and big.size == (800, 600)
    with pytest.raises(ValueError, match="min_side"):
        upscale(_scene(), 0)


def test_stacked_boxes_get_labels_that_do_not_overlap_and_stay_inside():
    sizes = [(90, 20)] * 6
    rects = place_labels([[b * 8 for b in box] for box in STACK * 2], sizes, (512, 512))
    for i, r in enumerate(rects):
        assert (r[2] - r[0], r[3] - r[1]) == sizes[i]
        assert 0 <= r[0] and 0 <= r[1] and r[2] <= 512 and r[3] <= 512
        for q in rects[:i]:
            assert not _intersect(r, q), (r, q)
    # the first label goes where people look for it: just above its box, left-aligned
    assert rects[0] == (72, 148, 162, 168)


def test_place_labels_keeps_labels_near_their_boxes_in_a_crowded_corner():
    # a box at the top edge: "above" is clamped into the image; the others still find room
    rects = place_labels([[0, 0, 40, 40]] * 3, [(30, 12)] * 3, (100, 100))
    assert len({r for r in rects}) == 3
    assert all(not _intersect(a, b) for i, a in enumerate(rects) for b in rects[:i])
    assert all(r[1] <= 52 for r in rects)  # within a few label heights of the box


def test_draw_boxes_upscales_colours_by_class_and_draws_each_label():
    classes = [7, 3, 5]
    img = draw_boxes(_scene(), STACK, ["6", "2", "4"], [0.93, 0.41, 0.12], classes=classes)
    assert img.size == (512, 512)
    a = np.asarray(img)
    # the outline of the box (8, 20, 32, 44): its left edge at x = 64, on rows no label covers
    for y in range(250, 330):
        assert tuple(a[y, 64]) == class_colour(3)
        assert tuple(a[y, 72]) == class_colour(7)  # box (9, 21, 31, 43)
        assert tuple(a[y, 80]) == class_colour(5)  # the innermost box (10, 22, 30, 42)
    # each label's background in its class colour: as many distinct label colours as boxes
    for c in classes:
        assert (a.reshape(-1, 3) == class_colour(c)).all(axis=1).sum() > 200
    # deterministic
    again = draw_boxes(_scene(), STACK, ["6", "2", "4"], [0.93, 0.41, 0.12], classes=classes)
    assert np.array_equal(a, np.asarray(again))


def test_draw_boxes_label_rectangles_match_place_labels():
    img = draw_boxes(_scene(), STACK[:1], ["6"], [0.93], classes=[1], font_size=16, width=3)
    a = np.asarray(img)
    font = default_font(16)
    x0, y0, x1, y1 = font.getbbox("6 0.93")
    (r,) = place_labels([[b * 8 for b in STACK[0]]], [(x1 + 6, y1 + 6)], (512, 512))
    # the label's top-left pixel is its class colour, the pixel just above it the scene's black
    assert tuple(a[r[1], r[0]]) == PALETTE[1] and tuple(a[r[1] - 1, r[0]]) == (0, 0, 0)


def test_draw_boxes_refuses_mismatched_input():
    with pytest.raises(ValueError, match="labels"):
        draw_boxes(_scene(), STACK, ["a"], None)
    with pytest.raises(ValueError, match="scores"):
        draw_boxes(_scene(), STACK, ["a", "b", "c"], [0.5])
    with pytest.raises(ValueError, match="boxes"):
        draw_boxes(_scene(), [[0, 0, 1]], ["a"])
    with pytest.raises(ValueError, match="boxes"):
        draw_boxes(_scene(), [[0, 0, float("nan"), 3]], ["a"])
    assert draw_boxes(_scene(), np.zeros((0, 4)), []).size == (512, 512)


def test_class_colours_are_stable_and_distinct():
    assert len(set(PALETTE)) == 10 and class_colour(3) == class_colour(13)
    assert class_colour("person") == class_colour("person")  # CRC-32, not Python's salted hash


def test_colours_follow_mmposes_coco_meta():
    # mmpose configs/_base_/datasets/coco.py skeleton_info, by joint names
    ref = {("left_ankle", "left_knee"): GREEN, ("left_knee", "left_hip"): GREEN,
           ("right_ankle", "right_knee"): ORANGE, ("right_knee", "right_hip"): ORANGE,
           ("left_hip", "right_hip"): BLUE, ("left_shoulder", "left_hip"): BLUE,
           ("right_shoulder", "right_hip"): BLUE, ("left_shoulder", "right_shoulder"): BLUE,
           ("left_shoulder", "left_elbow"): GREEN, ("right_shoulder", "right_elbow"): ORANGE,
           ("left_elbow", "left_wrist"): GREEN, ("right_elbow", "right_wrist"): ORANGE,
           ("left_eye", "right_eye"): BLUE, ("nose", "left_eye"): BLUE, ("nose", "right_eye"): BLUE,
           ("left_eye", "left_ear"): BLUE, ("right_eye", "right_ear"): BLUE,
           ("left_ear", "left_shoulder"): BLUE, ("right_ear", "right_shoulder"): BLUE}
    for (a, b), c in ref.items():
        assert limb_colour(a, b) == limb_colour(b, a) == c
    assert len(ref) == len(COCO_SKELETON)
    assert [keypoint_colour(n) for n in COCO_KEYPOINT_NAMES] == [BLUE] * 5 + [GREEN, ORANGE] * 6
    # other skeletons: by side
    assert limb_colour("left_paw", "left_elbow") == GREEN and limb_colour("tail", "left_hip") == BLUE


def _person() -> np.ndarray:
    """A COCO person in a 64x64 image, all joints scored 0.9."""
    xy = {"nose": (32, 8), "left_eye": (34, 7), "right_eye": (30, 7), "left_ear": (36, 8), "right_ear": (28, 8),
          "left_shoulder": (40, 16), "right_shoulder": (24, 16), "left_elbow": (46, 26), "right_elbow": (18, 26),
          "left_wrist": (50, 38), "right_wrist": (14, 38), "left_hip": (38, 36), "right_hip": (26, 36),
          "left_knee": (40, 48), "right_knee": (24, 48), "left_ankle": (41, 60), "right_ankle": (23, 60)}
    return np.array([[*xy[n], 0.9] for n in COCO_KEYPOINT_NAMES], dtype=float)


def _at(a: np.ndarray, x: float, y: float, f: int) -> tuple[int, ...]:
    return tuple(int(v) for v in a[round((y + 0.5) * f - 0.5), round((x + 0.5) * f - 0.5)])


def test_skeleton_limbs_and_joints_take_their_side_colour():
    p = _person()
    img = draw_skeletons(Image.new("RGB", (64, 64)), [p], COCO_SKELETON)
    assert img.size == (512, 512)
    a = np.asarray(img)
    mid = lambda i, j: ((p[i, 0] + p[j, 0]) / 2, (p[i, 1] + p[j, 1]) / 2)  # noqa: E731
    assert _at(a, *mid(7, 9), 8) == GREEN     # left forearm (elbow-wrist)
    assert _at(a, *mid(8, 10), 8) == ORANGE   # right forearm
    assert _at(a, *mid(11, 12), 8) == BLUE    # hips
    assert _at(a, *mid(13, 15), 8) == GREEN   # left shin
    assert _at(a, *p[9, :2], 8) == GREEN and _at(a, *p[10, :2], 8) == ORANGE and _at(a, *p[0, :2], 8) == BLUE
    assert np.array_equal(a, np.asarray(draw_skeletons(Image.new("RGB", (64, 64)), [p], COCO_SKELETON)))


def test_low_score_joints_and_their_limbs_are_not_drawn():
    p = _person()
    p[9, 2] = 0.1  # left wrist below the threshold
    a = np.asarray(draw_skeletons(Image.new("RGB", (64, 64)), [p], COCO_SKELETON, score_thr=0.2))
    assert _at(a, *p[9, :2], 8) == (0, 0, 0)
    assert _at(a, (p[7, 0] + p[9, 0]) / 2, (p[7, 1] + p[9, 1]) / 2, 8) == (0, 0, 0)
    assert _at(a, *p[7, :2], 8) == GREEN  # the elbow still is
    shown = np.asarray(draw_skeletons(Image.new("RGB", (64, 64)), [p], COCO_SKELETON, score_thr=0.05))
    assert _at(shown, *p[9, :2], 8) == GREEN


def test_skeleton_boxes_and_bad_input():
    img = draw_skeletons(Image.new("RGB", (64, 64)), [_person()], COCO_SKELETON, boxes=[[10, 4, 54, 62]])
    assert tuple(np.asarray(img)[200, 80]) == (255, 255, 0)  # the box's left edge at x = 10 * 8
    nobody = draw_skeletons(Image.new("RGB", (64, 64)), [], [(0, 20)], boxes=np.zeros((0, 4)))
    assert nobody.size == (512, 512) and not np.asarray(nobody).any()
    with pytest.raises(ValueError, match="persons"):
        draw_skeletons(Image.new("RGB", (64, 64)), [np.zeros((17, 2))], COCO_SKELETON)
    with pytest.raises(ValueError, match="skeleton"):
        draw_skeletons(Image.new("RGB", (64, 64)), [_person()], [(0, 17)])
    with pytest.raises(ValueError, match="names"):
        draw_skeletons(Image.new("RGB", (64, 64)), [_person()], COCO_SKELETON, names=["a"])


def test_jet_runs_from_blue_through_green_to_red():
    c = jet(np.array([0.0, 0.5, 1.0]))
    assert c[0, 2] > 100 and c[0, 0] == 0 and c[1, 1] == 255 and c[2, 0] > 100 and c[2, 2] == 0


def test_attention_strip_lays_out_panels_and_a_colour_bar():
    maps = {(1, 2): np.full((1, 1, 8, 8), 0.1), (1, 3): np.full((1, 1, 16, 16), 0.9), (2, 3): np.full((8, 8), 0.5)}
    img = attention_strip(_scene(), maps, panel=96, alpha=1.0)
    a = np.asarray(img)
    # input column + 2 flow columns + bar: wider than three panels; two stage rows
    assert img.width > 3 * 96 and img.height > 2 * 96
    colours = {tuple(c) for c in a.reshape(-1, 3)}
    assert tuple(jet(np.float32(0.1))) in colours and tuple(jet(np.float32(0.9))) in colours  # maps are float32
    # the colour bar holds the whole ramp, 0 to 1
    assert tuple(jet(np.array(0.0))) in colours and tuple(jet(np.array(1.0))) in colours
    assert np.array_equal(a, np.asarray(attention_strip(_scene(), maps, panel=96, alpha=1.0)))
    with pytest.raises(ValueError, match="maps"):
        attention_strip(_scene(), {})
    with pytest.raises(ValueError, match="alpha"):
        attention_strip(_scene(), maps, alpha=2)
