"""Stick figures: a small keypoint data set in COCO's format, drawn on first use.

Each image (160x160 RGB PNG) shows 1-3 articulated stick figures with COCO's 17 joints,
dressed: a shirt (the torso, the quadrilateral of shoulders and hips, and the upper arms),
skin (neck, forearms, hands, the head), trousers or shorts, shoes; limbs are thick lines
with round ends between the joints of COCO's skeleton, the head a disc carrying the face
joints (dark or light eyes and nose, ears as small discs on the rim, the far ear hidden
when the head turns). The background is cluttered: a smooth colour field with pixel noise,
random lines and blobs, and unlabelled limb fragments. Poses (torso lean, limb angles,
foreshortened limb lengths, head turn and tilt), heights (55-125 pixels), places, limb
widths and colours are drawn at random; things in front of the figures, and the figures
themselves, occlude joints.

Figures face the camera: the person's left side is on the image's right, as for a COCO
person seen from the front, so left and right are decidable and a mirrored figure is the
same figure with its sides swapped (SimpleBaseline's flip augmentation stays valid).

Each person is annotated as COCO does: ``keypoints`` ``[x, y, v]`` x 17 in integer pixel
coordinates, ``v`` 2 where the joint's pixel shows the figure, 1 where something in front
hides it (or the head's turn hides an ear) and 0, with ``x = y = 0``, where it is outside
the image; ``num_keypoints`` (joints with ``v > 0``), ``segmentation`` (an uncompressed RLE
of the figure's silhouette inside the image), ``area`` (its pixel count), ``bbox`` (its
tight box), ``iscrowd`` 0, and the person category with COCO's keypoint names and 1-based
``skeleton``. The layout is COCO-2017's (``annotations/person_keypoints_{train,val}2017.json``,
``{train,val}2017/*.png``), so :class:`tdaf.pose.CocoPersons` reads it unchanged.

The same arguments write the same files (numpy's seeded Generator, PIL drawing without
anti-aliasing). ``--data stick_figures`` writes the set under ``--data-dir`` or, by default,
``$TDAF_DATA/stick_figures-v1`` (``~/.cache/tdaf``), once, atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..data.registry import DatasetSpec, data_home, register_dataset
from ..io.files import staged_dir
from .data import TASK, CocoPersons, annotation_file

__all__ = [
    "KEYPOINT_NAMES", "SKELETON", "CATEGORY", "Scene", "render_scene", "write_stick_figures", "stick_figures_root",
    "open_stick_figures",
]

log = logging.getLogger("tdaf.pose")

VERSION = "stick_figures-v1"
KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
]
# COCO's person skeleton (1-based joint indices), as in person_keypoints_*2017.json.
SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
            [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
CATEGORY = {"id": 1, "name": "person", "supercategory": "person", "keypoints": KEYPOINT_NAMES, "skeleton": SKELETON}
SIZES = {"train": 600, "val": 120}  # images; 1-3 persons each
CANVAS = (160, 160)  # width, height
HEIGHTS = (55, 125)  # figure height in pixels (head top to ankles of a straight figure)
PERSONS = (1, 3)
LIMB_WIDTH = (0.05, 0.09)  # x the figure's height
CLUTTER = (2, 6)  # lines, blobs and limb fragments behind the figures
OCCLUDERS = (0, 3)  # ... and in front of them
OCCLUDER = 255  # the owner-map value of things drawn in front of the figures

NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR, L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANK, R_ANK = \
    range(17)


@dataclass
class Figure:
    """One drawn person: joints (17, 2) in integer pixels, the head (centre, radius), the
    widths and colours it is drawn with, and the ears its head's turn hides."""

    joints: np.ndarray
    head: tuple[np.ndarray, float]
    limb_width: int
    colours: dict[str, tuple[int, int, int]]
    hidden: set[int]


@dataclass
class Scene:
    """A rendered image (H, W, 3) uint8, its owner map (H, W) uint8 (figure ``k`` drew the
    pixels holding ``k + 1``, :data:`OCCLUDER` marks things in front, 0 the background), one
    COCO annotation per figure (without ``id`` / ``image_id``; with the ``colours`` it is
    drawn in), and each figure's joints (17, 2) wherever they are, the image or not."""

    image: np.ndarray
    owner: np.ndarray
    persons: list[dict[str, Any]]
    joints: list[np.ndarray]


def _unit(angle: float) -> np.ndarray:
    return np.array([math.sin(angle), math.cos(angle)])  # angle 0 points down the image


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, set[int]]:
    """Joints (17, 2) of a figure of height ~1 with its pelvis at the origin (y down), the
    head centre and radius, and the hidden ears. ``side`` +1 is the person's left, drawn on
    the image's right (a figure facing the camera)."""
    lean = float(np.clip(rng.normal(0, 0.15), -0.4, 0.4))
    down = _unit(lean)  # from neck to pelvis
    left = np.array([down[1], -down[0]])  # perpendicular, the person's left (image right)
    j = np.zeros((17, 2))
    hip_w, sh_w = 0.085 * rng.uniform(0.8, 1.2), 0.12 * rng.uniform(0.85, 1.15)
    neck = -0.30 * rng.uniform(0.9, 1.1) * down
    for side, sh, hip, el, wr, kn, an in ((1, L_SH, L_HIP, L_EL, L_WR, L_KNEE, L_ANK),
                                          (-1, R_SH, R_HIP, R_EL, R_WR, R_KNEE, R_ANK)):
        j[hip] = side * hip_w * left
        j[sh] = neck + side * sh_w * left
        # arms: from hanging (0) out to raised above the head (2.6 rad), slightly across the body
        upper = rng.uniform(-0.4, 2.6)
        fore = upper + rng.uniform(-2.0, 2.0)
        j[el] = j[sh] + 0.16 * rng.uniform(0.6, 1.0) * _rotate(down, -side * upper)
        j[wr] = j[el] + 0.14 * rng.uniform(0.6, 1.0) * _rotate(down, -side * fore)
        thigh = rng.uniform(-0.2, 0.9)
        shin = thigh + rng.uniform(-1.0, 1.0)
        j[kn] = j[hip] + 0.24 * rng.uniform(0.65, 1.0) * _rotate(down, -side * thigh)
        j[an] = j[kn] + 0.24 * rng.uniform(0.65, 1.0) * _rotate(down, -side * shin)
    tilt = float(rng.normal(0, 0.2))
    head_down = _rotate(down, tilt)
    head_left = np.array([head_down[1], -head_down[0]])
    radius = 0.075 * rng.uniform(0.9, 1.15)
    centre = neck - (0.085 + radius) * head_down
    turn = float(rng.uniform(-0.8, 0.8))  # > 0: towards the person's left
    j[NOSE] = centre + radius * (0.6 * turn * head_left + 0.25 * head_down)
    for side, eye, ear in ((1, L_EYE, L_EAR), (-1, R_EYE, R_EAR)):
        j[eye] = centre + radius * ((side * 0.38 * (1 - 0.3 * abs(turn)) + 0.55 * turn) * head_left - 0.15 * head_down)
        j[ear] = centre + radius * (side * 0.95 * (1 - 0.5 * max(0.0, side * turn)) * head_left)
    hidden = {ear for side, ear in ((1, L_EAR), (-1, R_EAR)) if side * turn > 0.45}
    return j, centre, radius, hidden


def _colour(rng: np.random.Generator, away_from: np.ndarray, min_dist: float = 90.0) -> tuple[int, int, int]:
    """A random colour at least ``min_dist`` (RGB distance) from ``away_from``."""
    for _ in range(50):
        c = rng.integers(0, 256, size=3)
        if np.linalg.norm(c - away_from) >= min_dist:
            break
    return (int(c[0]), int(c[1]), int(c[2]))


def _contrast(c: tuple[int, int, int]) -> tuple[int, int, int]:
    return (20, 20, 20) if sum(c) > 330 else (235, 235, 235)


def _figure(rng: np.random.Generator, size: tuple[int, int], background: np.ndarray) -> Figure:
    """A figure placed on the canvas: pelvis inside it (limbs may leave it), turned a little."""
    w, h = size
    height = rng.uniform(*HEIGHTS)
    joints, centre, radius, hidden = _pose(rng)
    roll = float(rng.normal(0, 0.15))
    pelvis = np.array([rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.25 * h, 0.85 * h)])

    def place(p: np.ndarray) -> np.ndarray:
        return np.round(_rotate(p, roll) * height + pelvis)
    # clothes: a shirt (torso, upper arms), skin (neck, forearms, hands, head), trousers (or
    # shorts: bare shins), shoes; elbows, wrists, knees and ankles sit where the parts meet
    shirt = _colour(rng, background)
    skin = _colour(rng, background, 60.0) if rng.random() < 0.5 else _colour_near(rng, SKIN)
    trousers = _colour(rng, background)
    colours = dict(shirt=shirt, skin=skin, trousers=trousers, shins=skin if rng.random() < 0.3 else trousers,
                   shoes=_colour(rng, np.array(trousers), 60.0), face=_contrast(skin),
                   ear=tuple(int(v * 0.75) for v in skin))  # type: ignore[dict-item]
    return Figure(np.stack([place(p) for p in joints]).astype(np.int64), (place(centre), radius * height),
                  max(2, int(round(height * rng.uniform(*LIMB_WIDTH)))), colours, hidden)


SKIN = np.array([[241, 194, 164], [224, 172, 105], [198, 134, 66], [141, 85, 36], [96, 60, 40]])


def _colour_near(rng: np.random.Generator, palette: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(palette[rng.integers(len(palette))] + rng.integers(-20, 21, size=3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _line(draw: ImageDraw.ImageDraw, a: np.ndarray, b: np.ndarray, width: int, fill: Any) -> None:
    """A thick segment with round ends (PIL's ``joint="curve"`` rounds only inner joints)."""
    draw.line([tuple(a), tuple(b)], fill=fill, width=width)
    r = width / 2
    for p in (a, b):
        draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=fill)


def _disc(draw: ImageDraw.ImageDraw, c: np.ndarray, r: float, fill: Any) -> None:
    draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill)


def _draw_figure(draws: list[tuple[ImageDraw.ImageDraw, Any]], f: Figure) -> None:
    """``f`` on each ``(draw, fill)``: one fill for every part (an id on an owner map or a
    mask), or None for the figure's own colours."""
    j, w = f.joints.astype(float), f.limb_width
    centre, radius = f.head
    for draw, fills in draws:
        def fill(part: str) -> Any:
            return f.colours[part] if fills is None else fills
        outward = j[L_HIP] - j[R_HIP]
        for side, (hip, knee, ankle) in ((1, (L_HIP, L_KNEE, L_ANK)), (-1, (R_HIP, R_KNEE, R_ANK))):
            shin = j[ankle] - j[knee]
            foot = np.array([shin[1], -shin[0]]) / max(float(np.hypot(*shin)), 1e-6)
            foot *= side * (1 if foot @ outward >= 0 else -1)
            _line(draw, j[ankle], j[ankle] + foot * 1.3 * w, max(2, int(0.8 * w)), fill("shoes"))
            _line(draw, j[knee], j[ankle], w, fill("shins"))
            _line(draw, j[hip], j[knee], w, fill("trousers"))
        draw.polygon([tuple(j[L_SH]), tuple(j[R_SH]), tuple(j[R_HIP]), tuple(j[L_HIP])], fill=fill("shirt"))
        neck = (j[L_SH] + j[R_SH]) / 2
        _line(draw, neck, centre, max(2, int(w * 0.7)), fill("skin"))
        for shoulder, elbow, wrist in ((L_SH, L_EL, L_WR), (R_SH, R_EL, R_WR)):
            fore = j[wrist] - j[elbow]
            hand = j[wrist] + fore / max(float(np.hypot(*fore)), 1e-6) * 0.5 * w
            _line(draw, j[elbow], j[wrist], w, fill("skin"))
            _disc(draw, hand, 0.7 * w, fill("skin"))
            _line(draw, j[shoulder], j[elbow], w, fill("shirt"))
        _disc(draw, centre, radius, fill("skin"))
        ear_r = max(1.5, 0.3 * radius)
        for ear in (L_EAR, R_EAR):
            if ear not in f.hidden:
                _disc(draw, j[ear], ear_r, fill("ear"))
        dot = max(1.0, 0.14 * radius)
        for k in (L_EYE, R_EYE, NOSE):
            _disc(draw, j[k], dot, fill("face"))


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A smooth random colour field (a 4x4 grid of colours, bilinear) with pixel noise."""
    w, h = size
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
    noise = rng.normal(0, rng.uniform(4, 18), size=(h, w, 3))
    return np.clip(np.round(field + noise), 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: tuple[int, int], background: np.ndarray,
             owner: ImageDraw.ImageDraw | None = None, count: tuple[int, int] = CLUTTER) -> None:
    """Random lines, blobs and limb-like fragments (``owner``: also marked as occluders there)."""
    w, h = size
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        kind = rng.integers(3)
        fill = _colour(rng, background, 40.0)
        targets = [(draw, fill)] + ([(owner, OCCLUDER)] if owner is not None else [])
        if kind == 0:  # a straight line
            a, b = rng.uniform(-10, [w + 10, h + 10], size=(2, 2)).round()
            width = int(rng.integers(1, 8))
            for d, c in targets:
                d.line([tuple(a), tuple(b)], fill=c, width=width)
        elif kind == 1:  # a blob
            c, r = rng.uniform(0, [w, h]), rng.uniform(3, 14, size=2)
            for d, col in targets:
                d.ellipse([c[0] - r[0], c[1] - r[1], c[0] + r[0], c[1] + r[1]], fill=col)
        else:  # a fragment of a limb: two segments with a bend, round ends
            length, width = rng.uniform(8, 22), int(rng.integers(2, 8))
            a = rng.uniform(0, [w, h])
            t = rng.uniform(0, 2 * math.pi)
            b = a + length * _unit(t)
            c = b + length * _unit(t + rng.uniform(-2.0, 2.0))
            for d, col in targets:
                _line(d, a.round(), b.round(), width, col)
                _line(d, b.round(), c.round(), width, col)


def _overlaps(box: tuple[float, float, float, float], boxes: list[tuple[float, float, float, float]],
              limit: float) -> bool:
    x1, y1, x2, y2 = box
    for a1, b1, a2, b2 in boxes:
        iw, ih = min(x2, a2) - max(x1, a1), min(y2, b2) - max(y1, b1)
        if iw > 0 and ih > 0 and iw * ih > limit * min((x2 - x1) * (y2 - y1), (a2 - a1) * (b2 - b1)):
            return True
    return False


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a boolean mask: run lengths in column-major order, starting with a run of 0s."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"counts": runs, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def render_scene(rng: np.random.Generator, size: tuple[int, int] = CANVAS,
                 persons: tuple[int, int] = PERSONS) -> Scene:
    """One image with ``persons`` (min, max) stick figures and their annotations (see the module doc)."""
    w, h = size
    background = _background(rng, size)
    mean = background.reshape(-1, 3).mean(axis=0)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    _clutter(rng, draw, size, mean, count=CLUTTER)
    owner = Image.new("L", (w, h), 0)
    own = ImageDraw.Draw(owner)
    figures: list[Figure] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(persons[0], persons[1] + 1))):
        for _try in range(20):  # figures may overlap a little (and occlude each other), never mostly
            f = _figure(rng, size, mean)
            lo, hi = f.joints.min(axis=0), f.joints.max(axis=0)
            box = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
            if not _overlaps(box, boxes, 0.3):
                break
        else:
            continue
        figures.append(f)
        boxes.append(box)
    silhouettes = []
    for k, f in enumerate(figures):
        sil = Image.new("L", (w, h), 0)
        _draw_figure([(draw, None), (own, k + 1), (ImageDraw.Draw(sil), 1)], f)
        silhouettes.append(np.asarray(sil, dtype=bool))
    # things in front: a few blobs and fragments that hide joints (v = 1)
    _clutter(rng, draw, size, mean, owner=own, count=OCCLUDERS)
    owner_map = np.asarray(owner).copy()
    annotations = []
    for k, (f, sil) in enumerate(zip(figures, silhouettes)):
        kpts = []
        for i, (x, y) in enumerate(f.joints.tolist()):
            if not (0 <= x < w and 0 <= y < h):
                kpts += [0, 0, 0]
            else:
                seen = owner_map[y, x] == k + 1 and i not in f.hidden
                kpts += [int(x), int(y), 2 if seen else 1]
        ys, xs = np.nonzero(sil)
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        annotations.append(dict(
            category_id=1, iscrowd=0, keypoints=kpts, num_keypoints=sum(v > 0 for v in kpts[2::3]), bbox=bbox,
            area=float(sil.sum()), segmentation=rle_encode(sil), colours={p: list(c) for p, c in f.colours.items()},
        ))
    return Scene(np.asarray(img).copy(), owner_map, annotations, [f.joints.copy() for f in figures])


def write_stick_figures(root: str | os.PathLike[str], sizes: dict[str, int] | None = None, seed: int = 0,
                        size: tuple[int, int] = CANVAS, persons: tuple[int, int] = PERSONS) -> Path:
    """Write the set under ``root`` (a new or empty folder): ``{train,val}2017/*.png`` and
    ``annotations/person_keypoints_{train,val}2017.json``; ``sizes`` is images per split
    (default :data:`SIZES`). The folder is written whole, then renamed into place."""
    root = Path(root).expanduser()
    sizes = dict(SIZES if sizes is None else sizes)
    if set(sizes) - {"train", "val"} or any(int(n) < 1 for n in sizes.values()):
        raise ValueError(f"sizes: got {sizes}; allowed: images per split, 'train' and/or 'val', each >= 1")
    if not (1 <= persons[0] <= persons[1]):
        raise ValueError(f"persons: got {persons}; allowed: 1 <= min <= max")
    if min(size) < 32:
        raise ValueError(f"size: got {size}; allowed: width and height >= 32")
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"root: {root} exists and is not empty; write_stick_figures makes a new folder")
    with staged_dir(root) as tmp:
        (tmp / "annotations").mkdir()
        ann_id = 1
        for split, count in sizes.items():
            rng = np.random.default_rng([seed, 0 if split == "train" else 1])
            folder = f"{split}2017"
            (tmp / folder).mkdir()
            images, annotations = [], []
            for i in range(count):
                img_id = i + 1
                scene = render_scene(rng, size, persons)
                name = f"{img_id:012d}.png"
                Image.fromarray(scene.image).save(tmp / folder / name)
                images.append({"id": img_id, "file_name": name, "width": size[0], "height": size[1]})
                for p in scene.persons:
                    p = {k: v for k, v in p.items() if k != "colours"}
                    annotations.append({"id": ann_id, "image_id": img_id, **p})
                    ann_id += 1
            (tmp / "annotations" / f"person_keypoints_{folder}.json").write_text(json.dumps(
                {"info": {"description": f"tdaf {VERSION}, seed {seed}"}, "images": images,
                 "annotations": annotations, "categories": [CATEGORY]}))
    return root


def _complete(root: Path) -> bool:
    return all((root / "annotations" / f"person_keypoints_{s}2017.json").is_file() for s in ("train", "val"))


def stick_figures_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the set, written there on first use: ``data_dir``, or by default
    ``$TDAF_DATA/stick_figures-v1`` (``~/.cache/tdaf/stick_figures-v1``)."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
    else:
        root = data_home() / VERSION
    if _complete(root):
        return root
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"--data-dir: {root} holds files but no stick figures (annotations/person_keypoints_"
                         f"{{train,val}}2017.json); give an empty or new folder")
    try:
        write_stick_figures(root)
        log.info("wrote the stick figures to %s", root)
    except (OSError, ValueError):
        if not _complete(root):  # not another process's, finished first
            raise
    return root


def open_stick_figures(split: str, data_dir: str | os.PathLike[str] | None = None) -> CocoPersons:
    """The persons of a split of the stick figures (written on first use, see :func:`stick_figures_root`)."""
    ann, images = annotation_file(stick_figures_root(data_dir), split)
    return CocoPersons(ann, images)


register_dataset(DatasetSpec(
    "stick_figures", TASK, open_stick_figures, needs_dir=False,
    help="1-3 stick figures with COCO's 17 joints on cluttered 160x160 images, COCO keypoints format "
         "(written on first use; bundled, nothing downloaded)",
))
