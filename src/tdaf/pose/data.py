"""COCO keypoints for top-down pose estimation (paper §4.3): person crops from ground-truth
boxes or from a detector's results, SimpleBaseline's augmentation and targets.

On disk (the COCO-2017 layout)::

    DIR/annotations/person_keypoints_train2017.json   DIR/train2017/*.jpg
    DIR/annotations/person_keypoints_val2017.json     DIR/val2017/*.jpg

Persons are selected as the reference loaders do: crowd annotations are left out, a
ground-truth person with no labelled joint is skipped, a box is clipped to its image
and skipped if nothing of it is inside; detector boxes are kept for the person class
above a score threshold, and a detection naming an image id the annotation file does
not hold is skipped. Every skip is counted and logged with the ids concerned.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..data import Batch, register_dataset
from ..data.registry import DatasetSpec
from ..data.checks import check_box, check_keypoints, check_number, check_size, is_number
from ..io.images import open_image
from ..io.optional import require
from .codec import affine_matrix, apply_affine, box_to_center_scale, crop_to_image, encode_heatmaps, pil_affine_data

__all__ = [
    "CocoPersons", "TopDownTransform", "pose_collate", "KeypointInfo", "keypoint_info", "open_coco", "input_hw",
    "COCO_SIGMAS", "annotation_file", "read_person_boxes", "PERSON_BOXES_LAYOUTS",
]

log = logging.getLogger("tdaf.pose")

TASK = "pose"
# COCO's per-joint OKS constants (pycocotools' COCOeval.Params.kpt_oks_sigmas).
COCO_SIGMAS = tuple(s / 10 for s in (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87,
                                     0.87, 0.89, 0.89))
SPLITS = {"train": "train2017", "val": "val2017"}


@dataclass
class KeypointInfo:
    """The joints of a keypoint category: names, skeleton (0-based pairs), left/right pairs
    (for flipping), upper-body joints (for half-body augmentation) and OKS sigmas."""

    names: list[str]
    skeleton: list[tuple[int, int]]
    flip_pairs: list[tuple[int, int]]
    upper_body: list[int]
    sigmas: list[float]

    def meta(self) -> dict[str, Any]:
        return dict(keypoint_names=list(self.names), skeleton=[list(p) for p in self.skeleton],
                    flip_pairs=[list(p) for p in self.flip_pairs], upper_body=list(self.upper_body),
                    sigmas=list(self.sigmas))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> KeypointInfo:
        return cls(list(meta["keypoint_names"]), [tuple(p) for p in meta["skeleton"]],  # type: ignore[misc]
                   [tuple(p) for p in meta["flip_pairs"]], list(meta["upper_body"]),  # type: ignore[misc]
                   list(meta["sigmas"]))


def keypoint_info(category: dict[str, Any], source: str) -> KeypointInfo:
    """The joints of a COCO person category (``keypoints`` names, 1-based ``skeleton``):
    left/right pairs from ``left_*`` / ``right_*`` names, the upper body as the joints above
    the hips (COCO's first 11)."""
    names = category.get("keypoints")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{source}: the person category lists no keypoints (a person_keypoints_*.json file?)")
    index = {n: i for i, n in enumerate(names)}
    pairs = [(index[n], index["right_" + n[5:]]) for n in names if n.startswith("left_") and "right_" + n[5:] in index]
    skeleton = [(int(a) - 1, int(b) - 1) for a, b in category.get("skeleton", [])]
    lower = {i for i, n in enumerate(names) if any(k in n for k in ("hip", "knee", "ankle"))}
    upper = [i for i in range(len(names)) if i not in lower]
    sigmas = list(COCO_SIGMAS) if len(names) == len(COCO_SIGMAS) else [0.05] * len(names)
    return KeypointInfo(list(names), skeleton, pairs, upper, sigmas)


def input_hw(input_size: int | None) -> tuple[int, int]:
    """The crop (height, width) of a config's ``input_size`` (the height; the width is 3/4 of
    it, SimpleBaseline's 256x192 and 384x288)."""
    h = 256 if input_size is None else int(input_size)
    if h < 128 or h % 128:
        raise ValueError(f"input_size: got {input_size}; allowed for pose: a multiple of 128 (the crop height; "
                         f"the width is 3/4 of it: 128x96, 256x192, 384x288)")
    return h, h * 3 // 4


def annotation_file(data_dir: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """``(annotation json, image folder)`` of a split of a COCO-layout folder."""
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}; allowed: {', '.join(SPLITS)}")
    root = Path(data_dir).expanduser()
    ann = root / "annotations" / f"person_keypoints_{SPLITS[split]}.json"
    images = root / SPLITS[split]
    if not ann.is_file():
        raise FileNotFoundError(f"--data-dir: {ann} not found (expected the COCO layout: annotations/"
                                f"person_keypoints_{SPLITS[split]}.json and {SPLITS[split]}/ under {root})")
    if not images.is_dir():
        raise FileNotFoundError(f"--data-dir: image folder {images} not found")
    return ann, images


def load_coco(ann_file: str | os.PathLike[str]) -> Any:
    """pycocotools' COCO of ``ann_file`` (its progress lines kept off stdout)."""
    COCO = require("pycocotools.coco", "coco", "COCO keypoint annotations").COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_file))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"annotations: {ann_file} is not a COCO annotation file ({e})") from None


def _ids(values: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


@dataclass
class CocoPersons:
    """The person instances of one split, untransformed: ``load(i) -> ((image, instance), i,
    name)``, with ``(None, i, reason)`` for an image file that cannot be read.

    ``boxes="gt"`` takes the ground-truth boxes; a path takes a detector's COCO results json
    (``[{"image_id", "category_id", "bbox", "score"}, ...]``), its person boxes scoring
    above ``score_thr``. ``dropped`` counts the persons left out, by reason, with their ids.
    """

    ann_file: Path
    image_dir: Path
    boxes: str = "gt"
    score_thr: float = 0.0
    instances: list[dict[str, Any]] = field(default_factory=list)
    dropped: dict[str, list[Any]] = field(default_factory=dict)
    # An image whose real size differs from its entry: warned about and read at its real
    # size (the box clipped to it), or, with ``strict``, refused like an unreadable image.
    strict: bool = False
    _size_warned: set[Any] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.coco = load_coco(self.ann_file)
        cats = self.coco.loadCats(self.coco.getCatIds(catNms=["person"])) or self.coco.loadCats(self.coco.getCatIds())
        if not cats:
            raise ValueError(f"annotations: {self.ann_file} has no categories")
        self.category_id = int(cats[0]["id"])
        self.info = keypoint_info(cats[0], f"annotations: {self.ann_file}")
        self.image_ids = sorted(self.coco.getImgIds())
        if self.boxes == "gt":
            self._from_ground_truth()
        else:
            self._from_detections(Path(self.boxes))
        for reason, ids in self.dropped.items():
            if ids:
                log.warning("%s: %d person(s) skipped: %s (%s)", self.ann_file.name, len(ids), reason, _ids(ids))

    def __len__(self) -> int:
        return len(self.instances)

    def _drop(self, reason: str, ident: Any) -> None:
        self.dropped.setdefault(reason, []).append(ident)

    def _from_ground_truth(self) -> None:
        j = len(self.info.names)
        for img_id in self.image_ids:
            img = self.coco.imgs[img_id]
            check_size(img.get("width"), img.get("height"), f"annotations: {self.ann_file}: image id {img_id}")
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, catIds=[self.category_id], iscrowd=False)):
                where = f"annotations: {self.ann_file}: annotation id {ann.get('id')} (image id {img_id})"
                kpts = np.asarray(check_keypoints(ann.get("keypoints", []), j, where), dtype=np.float64).reshape(-1, 3)
                bbox = check_box(ann.get("bbox"), where, positive=False)
                if bbox[2] < 0 or bbox[3] < 0:
                    raise ValueError(f"{where}: bbox {ann['bbox']!r} has a negative width or height; allowed: "
                                     f"[x, y, width, height] with width, height >= 0")
                if "area" in ann:
                    check_number(ann["area"], where, "area")
                if not (kpts[:, 2] > 0).any():
                    self._drop("no labelled joint (ann ids)", ann["id"])
                    continue
                box = crop_to_image(bbox, img["width"], img["height"])
                if box is None or not ann.get("area", 1) > 0:
                    self._drop("box empty or outside the image (ann ids)", ann["id"])
                    continue
                self.instances.append(dict(image_id=img_id, file=img["file_name"], box=box, score=1.0,
                                           keypoints=kpts, area=float(ann.get("area", box[2] * box[3]))))

    def _from_detections(self, path: Path) -> None:
        dets = read_person_boxes(path, "boxes")
        if isinstance(dets, dict):
            dets = self._named_boxes_as_results(dets, path)
        j = len(self.info.names)
        for i, d in enumerate(dets):
            where = f"boxes: {path}: detection {i} (image id {d['image_id']!r})"
            category = d.get("category_id", self.category_id)
            if not is_number(category) or int(category) != category:
                raise ValueError(f"{where}: category_id {category!r}; allowed: a whole number (the person "
                                 f"category is {self.category_id})")
            if int(category) != self.category_id:
                continue
            check_box(d["bbox"], where)
            score = check_number(d.get("score", 1.0), where, "score")
            if score <= self.score_thr:
                self._drop(f"detection score <= {self.score_thr} (image ids)", d["image_id"])
                continue
            img = self.coco.imgs.get(d["image_id"])
            if img is None:
                self._drop("detection names an image id not in the annotations (image ids)", d["image_id"])
                continue
            box = crop_to_image(d["bbox"], img["width"], img["height"])
            if box is None:
                self._drop("box empty or outside the image (image ids)", d["image_id"])
                continue
            self.instances.append(dict(image_id=d["image_id"], file=img["file_name"], box=box, score=score,
                                       keypoints=np.zeros((j, 3)), area=float(box[2] * box[3])))

    def _named_boxes_as_results(self, named: dict[str, list[list[Any]]], path: Path) -> list[dict[str, Any]]:
        """``{"image.jpg": [[x, y, w, h(, score)], ...]}`` as COCO results of the person category,
        the file names matched to the annotations' ``file_name`` (or its base name)."""
        ids: dict[str, int] = {}
        for img in self.coco.imgs.values():
            ids.setdefault(str(img["file_name"]), img["id"])
            ids.setdefault(Path(img["file_name"]).name, img["id"])
        results = []
        for name, items in named.items():
            img_id = ids.get(name, ids.get(Path(name).name))
            if img_id is None:
                self._drop("boxes of an image not in the annotations (file names)", name)
                continue
            for i, b in enumerate(items):
                where = f"boxes: {path}: {name!r} box {i}"
                box = check_box(b[:4], where, "[x, y, w, h]")
                score = check_number(b[4], where, "score") if len(b) > 4 else 1.0
                results.append({"image_id": img_id, "category_id": self.category_id, "bbox": box, "score": score})
        return results

    def load(self, index: int) -> tuple[Any, int, str]:
        inst = self.instances[index]
        path = self.image_dir / inst["file"]
        try:
            img = open_image(path)
        except (FileNotFoundError, ValueError) as e:
            return None, index, f"{path} ({e})"
        entry = self.coco.imgs[inst["image_id"]]
        if (img.width, img.height) != (entry["width"], entry["height"]):
            said = f"{entry['width']}x{entry['height']}"
            if self.strict:
                return None, index, (f"{path} (image id {inst['image_id']}: the image is {img.width}x{img.height} "
                                     f"but {self.ann_file.name} says {said}; --strict refuses it)")
            # The pixels are the truth: the box clipped to the real image (left out if nothing remains).
            box = crop_to_image(inst["box"], img.width, img.height)
            if inst["image_id"] not in self._size_warned:
                self._size_warned.add(inst["image_id"])
                log.warning("%s: image id %s is %dx%d but %s says %s: read at its real size, its person boxes "
                            "clipped to it (--strict refuses such images)", path, inst["image_id"], img.width,
                            img.height, self.ann_file.name, said)
            if box is None:
                return None, index, (f"{path} (image id {inst['image_id']}: the person box lies outside the "
                                     f"{img.width}x{img.height} image; its entry says {said})")
            inst = dict(inst, box=box)
        return (img, inst), index, str(path)


@dataclass
class Augment:
    """SimpleBaseline's training augmentation (mmpose 0.x's COCO 256x192 configs)."""

    scale_factor: float = 0.35
    rotation_factor: float = 40.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8


class TopDownTransform:
    """A person crop and its targets: the affine crop of ``input_hw`` (h, w) around the box
    (with scale / rotation / flip / half-body augmentation when ``augment`` is given; random
    draws from torch's generator, seeded per sample by :class:`tdaf.data.TransformedDataset`),
    normalised, plus Gaussian heat-maps (sigma 2) and per-joint weights.

    Returns ``(image (3, h, w), target)``; ``target`` holds ``heatmaps``, ``weights``,
    ``center``, ``scale``, ``image_id``, ``score``, ``area`` and ``keypoints`` (the joints in
    crop pixels with their visibility)."""

    def __init__(self, input_hw: tuple[int, int], info: KeypointInfo, augment: Augment | None = None,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                 stride: int = 4, sigma: float = 2.0) -> None:
        self.h, self.w = input_hw
        self.info = info
        self.augment = augment
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.stride = stride
        self.sigma = sigma

    def _half_body(self, kpts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        vis = kpts[:, 2] > 0
        upper = [i for i in self.info.upper_body if vis[i]]
        lower = [i for i in range(len(vis)) if vis[i] and i not in self.info.upper_body]
        if float(torch.rand(())) < 0.5 and len(upper) > 2:
            chosen = upper
        else:
            chosen = lower if len(lower) > 2 else upper
        if len(chosen) < 2:
            return None
        pts = kpts[chosen, :2]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        center = (lo + hi) / 2
        w, h = hi - lo
        ar = self.w / self.h
        if w > ar * h:
            h = w / ar
        elif w < ar * h:
            w = h * ar
        return center, np.array([w, h]) * 1.5

    def __call__(self, sample: tuple[Image.Image, dict[str, Any]]) -> tuple[torch.Tensor, dict[str, Any]]:
        img, inst = sample
        kpts = np.array(inst["keypoints"], dtype=np.float64)
        center, scale = box_to_center_scale(inst["box"], self.w / self.h)
        rotation, flip = 0.0, False
        a = self.augment
        if a is not None:
            if (kpts[:, 2] > 0).sum() > a.half_body_min_joints and float(torch.rand(())) < a.half_body_prob:
                hb = self._half_body(kpts)
                if hb is not None:
                    center, scale = hb
            scale = scale * float(np.clip(float(torch.randn(())) * a.scale_factor + 1,
                                          1 - a.scale_factor, 1 + a.scale_factor))
            if float(torch.rand(())) <= a.rotation_prob:
                rotation = float(np.clip(float(torch.randn(())) * a.rotation_factor,
                                         -2 * a.rotation_factor, 2 * a.rotation_factor))
            flip = float(torch.rand(())) <= a.flip_prob
        m = affine_matrix(center, scale, rotation, (self.w, self.h), flip=flip)
        crop = img.transform((self.w, self.h), Image.Transform.AFFINE, pil_affine_data(m),
                             resample=Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(crop, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        x = (x - self.mean) / self.std
        joints = apply_affine(kpts[:, :2], m)
        vis = kpts[:, 2].copy()
        if flip:
            order = list(range(len(vis)))
            for i, j in self.info.flip_pairs:
                order[i], order[j] = j, i
            joints, vis = joints[order], vis[order]
        heatmaps, weights = encode_heatmaps(joints, vis, (self.w // self.stride, self.h // self.stride), self.stride,
                                            self.sigma)
        target = dict(
            heatmaps=torch.from_numpy(heatmaps), weights=torch.from_numpy(weights),
            center=torch.tensor(center, dtype=torch.float64), scale=torch.tensor(scale, dtype=torch.float64),
            image_id=int(inst["image_id"]), score=float(inst["score"]), area=float(inst["area"]),
            keypoints=torch.from_numpy(np.concatenate([joints, vis[:, None]], axis=1)).float(),
        )
        return x, target


def pose_collate(items: list[tuple[Any, Any, str]]) -> Batch:
    """Stack the readable crops and their targets (tensors stacked, numbers as tensors);
    unreadable images are named in ``skipped``."""
    good = [it[0] for it in items if it[0] is not None]
    skipped = [it[2] for it in items if it[0] is None]
    if not good:
        return Batch(None, None, skipped)
    images = torch.stack([g[0] for g in good])
    targets: dict[str, torch.Tensor] = {}
    for key, value in good[0][1].items():
        values = [g[1][key] for g in good]
        targets[key] = torch.stack(values) if isinstance(value, torch.Tensor) else torch.tensor(values)
    return Batch(images, targets, skipped)


def open_coco(split: str, data_dir: str | os.PathLike[str] | None, boxes: str = "gt",
              score_thr: float = 0.0) -> CocoPersons:
    """The ``split`` of a COCO-layout folder (see the module doc) as person instances."""
    if data_dir is None:
        raise ValueError("--data-dir: the coco data set needs its folder (annotations/ and train2017/, val2017/)")
    ann, images = annotation_file(data_dir, split)
    return CocoPersons(ann, images, boxes=boxes, score_thr=score_thr)


PERSON_BOXES_LAYOUTS = ('a COCO detection results list [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, '
                        '...] or {"image.jpg": [[x, y, w, h(, score)], ...]}')


def read_person_boxes(path: str | os.PathLike[str], what: str = "--person-boxes") -> list[dict[str, Any]] | dict[str, Any]:
    """The JSON of ``--person-boxes`` (``tdaf eval`` and ``tdaf predict``), in either of its
    layouts (:data:`PERSON_BOXES_LAYOUTS`): a detector's COCO results list, or a mapping from
    image file names to boxes. Only the layout is checked here; each box is checked where it is used."""
    p = Path(path)
    try:
        boxes = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file: {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: {p} is not JSON ({e})") from None
    if isinstance(boxes, list) and all(isinstance(d, dict) and {"image_id", "bbox"} <= set(d) for d in boxes):
        return boxes
    if isinstance(boxes, dict) and all(isinstance(v, list) and all(isinstance(b, list) and len(b) in (4, 5) for b in v)
                                       for v in boxes.values()):
        return boxes
    raise ValueError(f"{what}: {p}: expected {PERSON_BOXES_LAYOUTS}")


def describe_drops(raw: CocoPersons) -> str:
    counts = Counter({k: len(v) for k, v in raw.dropped.items() if v})
    return "; ".join(f"{n} {k.split(' (')[0]}" for k, n in counts.items())


register_dataset(DatasetSpec(
    "coco", TASK, lambda split, data_dir: open_coco(split, data_dir), needs_dir=True,
    help="COCO-2017 keypoints: DIR/annotations/person_keypoints_{train,val}2017.json, DIR/{train,val}2017/",
))
