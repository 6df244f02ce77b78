"""Poses of the persons in image files: each box cropped as in evaluation, decoded to
image coordinates, and drawn as a skeleton by :func:`tdaf.draw.draw_skeletons`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.checks import check_box, check_number, is_number
from ..draw import draw_skeletons
from ..io.images import ImageList, open_image
from ..io.outputs import Outputs
from .codec import crop_to_image, flip_heatmaps
from .data import KeypointInfo, TopDownTransform, read_person_boxes
from .metrics import heatmaps_to_keypoints

__all__ = ["predict_poses", "read_box_file", "boxes_of", "draw_poses", "pose_picture", "COCO_PERSON"]

log = logging.getLogger("tdaf.predict")

COCO_PERSON = 1  # the person category id of COCO (and of the bundled stick figures)


def read_box_file(path: str | os.PathLike[str], score_thr: float | None = None,
                  category_id: int = COCO_PERSON) -> dict[str | int, list[list[float]]]:
    """Person boxes per image, from either layout of ``--person-boxes``: a mapping
    ``{"name.jpg": [[x, y, w, h(, score)], ...]}`` (file names as given, or their base names),
    or a detector's COCO results list, whose ``image_id`` names the image whose file name is
    that number (COCO's ``000000000139.jpg`` is image 139) and whose boxes of other categories
    than ``category_id`` are left out. Every box is checked as ``tdaf eval --person-boxes``
    checks it: finite numbers, width and height above 0, a finite score; with ``score_thr``,
    boxes scoring at most that are left out (as in evaluation)."""
    p = Path(path)
    boxes = read_person_boxes(p, "--person-boxes")
    out: dict[str | int, list[list[float]]] = {}
    if isinstance(boxes, list):
        for i, d in enumerate(boxes):
            where = f"--person-boxes: {p}: detection {i} (image id {d['image_id']!r})"
            category, img_id = d.get("category_id", category_id), d["image_id"]
            for name, v in (("category_id", category), ("image_id", img_id)):
                if not is_number(v) or int(v) != v:
                    raise ValueError(f"{where}: {name} {v!r}; allowed: a whole number")
            if int(category) != category_id:
                continue
            box = check_box(d["bbox"], where)
            score = check_number(d.get("score", 1.0), where, "score")
            if score_thr is None or score > score_thr:
                out.setdefault(int(img_id), []).append([*box, score])
        return out
    for name, items in boxes.items():
        out[str(name)] = []
        for i, b in enumerate(items):
            where = f"--person-boxes: {p}: {name!r} box {i}"
            box = check_box(b[:4], where, "[x, y, w, h]")
            score = check_number(b[4], where, "score") if len(b) > 4 else 1.0
            if score_thr is None or score > score_thr:
                out[str(name)].append([*box, score])
    return out


def boxes_of(boxes: dict[str | int, list[list[float]]], path: str | os.PathLike[str]) -> list[list[float]]:
    """The boxes :func:`read_box_file` read for the image at ``path``: by its path as given, its
    file name, or the image id its file name spells (COCO's naming)."""
    p = Path(path)
    for key in (str(p), p.name, int(p.stem) if p.stem.isdigit() else None):
        if key is not None and key in boxes:
            return boxes[key]
    return []


@torch.no_grad()
def predict_poses(model: nn.Module, meta: dict[str, Any], images: ImageList,
                  boxes: dict[str | int, list[list[float]]] | None = None, flip_test: bool = True,
                  device: torch.device | str = "cpu") -> tuple[list[dict[str, Any]], list[str]]:
    """``(results, skipped)``: per image its persons (``box``, ``score``, ``keypoints`` as
    ``[x, y, confidence]`` per joint in image pixels); without ``boxes`` the whole image is
    one person. Undecodable images from folders are skipped (and named), others raise."""
    info = KeypointInfo.from_meta(meta)
    hw = (int(meta["input_size"][1]), int(meta["input_size"][2]))
    stride = float(meta.get("heatmap_stride", 4))
    transform = TopDownTransform(hw, info, None, meta["mean"], meta["std"])
    model.eval().to(device)
    results, skipped = [], []
    for path, from_folder in zip(images.files, images.from_folder):
        try:
            img = open_image(path)
        except (FileNotFoundError, ValueError) as e:
            if not from_folder:
                raise
            skipped.append(f"{path} ({e})")
            continue
        clipped = outside = 0
        if boxes is None:
            person_boxes = [[0.0, 0.0, float(img.width), float(img.height), 1.0]]
        else:
            person_boxes = []
            for b in boxes_of(boxes, path):
                # as evaluation does: a box is clipped to the image, one wholly outside it is left out
                inside = crop_to_image(b[:4], img.width, img.height)
                if inside is None:
                    outside += 1
                    continue
                if not np.allclose(inside, b[:4]):
                    clipped += 1
                person_boxes.append([*inside, *b[4:]])
            if clipped or outside:
                log.warning("%s: %d person box(es) clipped to the %dx%d image, %d outside it left out", path, clipped,
                            img.width, img.height, outside)
        persons = []
        if person_boxes:
            j = len(info.names)
            crops, targets = zip(*(transform((img, dict(image_id=0, box=b[:4], score=b[4] if len(b) > 4 else 1.0,
                                                         area=b[2] * b[3], keypoints=np.zeros((j, 3)))))
                                   for b in person_boxes))
            x = torch.stack(crops).to(device)
            heatmaps = model(x).float()
            if flip_test:
                heatmaps = (heatmaps + flip_heatmaps(model(x.flip(-1)).float(), info.flip_pairs)) * 0.5
            center = torch.stack([t["center"] for t in targets])
            scale = torch.stack([t["scale"] for t in targets])
            coords, conf = heatmaps_to_keypoints(heatmaps.cpu(), center, scale, stride)
            for b, c, s in zip(person_boxes, coords, conf):
                persons.append(dict(box=[round(v, 2) for v in b[:4]], score=b[4] if len(b) > 4 else 1.0,
                                    keypoints=[[round(float(px), 2), round(float(py), 2), round(float(sc), 4)]
                                               for (px, py), sc in zip(c, s)]))
        results.append(dict(file=str(path), width=img.width, height=img.height, persons=persons,
                            boxes_clipped=clipped, boxes_outside=outside))
    return results, skipped


def pose_picture(image: Image.Image | str | os.PathLike[str], persons: Sequence[dict[str, Any]],
                 skeleton: Sequence[Sequence[int]], conf_thr: float = 0.2,
                 names: Sequence[str] | None = None) -> Image.Image:
    """The image (or the image file) with each person's box and skeleton (joints scoring above
    ``conf_thr``) drawn by :func:`tdaf.draw.draw_skeletons` in COCO's per-limb colours
    (``names``: the keypoint names that say each joint's side; 17 joints are COCO's): the
    pose task's one picture."""
    img = image.convert("RGB") if isinstance(image, Image.Image) else open_image(image)
    return draw_skeletons(img, [np.asarray(p["keypoints"], dtype=float) for p in persons], skeleton, names=names,
                          boxes=[[x, y, x + w, y + h] for x, y, w, h in (p["box"] for p in persons)],
                          score_thr=conf_thr)


def draw_poses(image_path: str | os.PathLike[str], persons: Sequence[dict[str, Any]],
               skeleton: Sequence[Sequence[int]], out: str | os.PathLike[str], conf_thr: float = 0.2,
               overwrite: bool = False) -> Path:
    """:func:`pose_picture` saved as PNG at ``out`` (atomically; never over the image
    itself, nor over an existing file without ``overwrite``)."""
    outputs = Outputs(overwrite=overwrite)
    outputs.protect([image_path], "image")
    target = outputs.claim(out, "out")
    with outputs:
        outputs.save_image(pose_picture(image_path, persons, skeleton, conf_thr), target)
    return target
