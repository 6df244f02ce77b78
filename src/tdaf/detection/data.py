"""COCO-format detection data (``instances_*.json`` + an image folder), its FCOS
transforms, and the bundled "digit scenes" set.

What pycocotools / torchvision users expect of the annotations, each counted and logged
once per split:

* ``iscrowd`` boxes are not training targets (torchvision's references drop them); COCOeval
  reads them from the ground truth as "ignore" regions;
* boxes reaching outside the image are clipped to it; boxes with no area left
  (``w <= 0`` or ``h <= 0`` after clipping) are dropped from the training targets;
* training skips images with no box left (torchvision's
  ``_coco_remove_images_without_annotations``); evaluation keeps every image;
* a missing field, a category id not in ``categories``, a bbox that is not 4 finite
  numbers, an ``iscrowd`` other than 0/1 or an image size that is not a positive whole
  number is an error naming the file, the annotation or image id and the field; an
  unreadable image is skipped and counted by the trainer (``--strict`` stops instead);
* an image whose real size differs from its entry is read at its real size with a
  warning, its boxes clipped to it (``--strict``: refused like an unreadable image).

Labels are the category ids themselves (torchvision's COCO convention: ``num_classes`` is
the largest id + 1, 91 for COCO).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data import Batch
from ..data.checks import check_size
from ..data.digits import digits_pixels
from ..data.registry import DatasetSpec, data_home, register_dataset
from ..io.files import staged_dir
from ..io.images import open_image
from .models import TASK

__all__ = [
    "CocoDetection", "train_transform", "eval_transform", "collate_detection", "write_digit_scenes",
    "open_coco", "open_digit_scenes", "find_coco_split", "RECIPES", "DIGIT_CATEGORIES", "ONE_CATEGORY",
]

log = logging.getLogger("tdaf.detection")

# Input sizes of torchvision's resizing (FCOS's own ``GeneralizedRCNNTransform``, which resizes
# every image to ``min_size`` whatever the data pipeline did): a sequence is multi-scale
# training, one value drawn per image, and evaluation uses the last.
RECIPES: dict[str, dict[str, Any]] = {
    # FCOS / paper §4.2: "2x" schedule, shorter side drawn from [640, 800], evaluated at 800.
    "fcos_ms": dict(min_size=[640, 672, 704, 736, 768, 800], max_size=1333, flip=True),
    "fcos": dict(min_size=[800], max_size=1333, flip=True),
    # The 64x64 digit scenes at 0.75x to 1x during training, evaluated at their own size; no
    # flip (a mirrored 2 is no digit).
    "digit_scenes": dict(min_size=[48, 56, 64], max_size=64, flip=False),
}

DIGIT_CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
ONE_CATEGORY = [{"id": 1, "name": "digit", "supercategory": "digit"}]


def _need(obj: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (has: {', '.join(map(str, obj)) or 'none'})")


class CocoDetection:
    """One split of a COCO-format data set: ``load(i) -> ((image, target) or None, image_id, name)``.

    ``target`` has ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY, in pixels), ``labels``
    (category ids) and ``image_id``. ``gt`` is the split's ground truth as pycocotools
    reads it (``area`` and ``iscrowd`` filled in where absent), for COCOeval.
    """

    def __init__(self, ann_file: str | os.PathLike[str], image_dir: str | os.PathLike[str], train: bool,
                 strict: bool = False) -> None:
        self.ann_file, self.image_dir, self.train = Path(ann_file), Path(image_dir), train
        # An image whose real size differs from its entry: warned about and read at its real
        # size (boxes clipped to it), or, with ``strict``, refused like an unreadable image.
        self.strict = strict
        self._size_warned: set[int] = set()
        f = self.ann_file
        if not f.is_file():
            raise FileNotFoundError(f"annotations: no such file: {f}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"images: no such folder: {self.image_dir} (the images of {f.name})")
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"annotations: {f} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"annotations: {f} must hold a JSON object with images, annotations, categories")
        _need(data, ("images", "annotations", "categories"), f"annotations: {f}")
        cats = data["categories"]
        for i, c in enumerate(cats):
            _need(c, ("id", "name"), f"annotations: {f}: categories[{i}]")
        self.categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]
        cat_ids = {c["id"] for c in self.categories}
        if not cat_ids or min(cat_ids) < 0:
            raise ValueError(f"annotations: {f}: categories: need at least one, with ids >= 0")
        self.num_classes = max(cat_ids) + 1
        images: dict[int, dict[str, Any]] = {}
        for i, im in enumerate(data["images"]):
            _need(im, ("id", "file_name", "width", "height"), f"annotations: {f}: images[{i}]")
            check_size(im["width"], im["height"], f"annotations: {f}: image id {im['id']}")
            images[int(im["id"])] = im
        counts: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}

        def note(what: str, which: str) -> None:
            counts[what] += 1
            examples.setdefault(what, []).append(which)
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        gt_anns = []
        for i, a in enumerate(data["annotations"]):
            where = f"annotations: {f}: annotation id {a.get('id', f'#{i}')}"
            _need(a, ("id", "image_id", "bbox", "category_id"), where)
            if a["category_id"] not in cat_ids:
                raise ValueError(f"{where}: category_id {a['category_id']!r} is not in categories "
                                 f"({', '.join(map(str, sorted(cat_ids)))})")
            if a["image_id"] not in images:
                raise ValueError(f"{where}: image_id {a['image_id']!r} is not in images")
            box = a["bbox"]
            if (not isinstance(box, (list, tuple)) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
                raise ValueError(f"{where}: bbox {box!r} is not [x, y, width, height] (4 finite numbers)")
            crowd = a.get("iscrowd", 0)
            if crowd not in (0, 1) or isinstance(crowd, float):
                raise ValueError(f"{where}: iscrowd {crowd!r}; allowed: 0 or 1")
            crowd = int(crowd)
            gt_anns.append(dict(a, area=float(a.get("area", box[2] * box[3])), iscrowd=crowd))
            if crowd:
                note("crowd boxes left out of the targets", f"annotation id {a['id']}")
                continue
            im = images[a["image_id"]]
            x1, y1, x2, y2 = box[0], box[1], box[0] + box[2], box[1] + box[3]
            cx1, cy1 = min(max(x1, 0), im["width"]), min(max(y1, 0), im["height"])
            cx2, cy2 = min(max(x2, 0), im["width"]), min(max(y2, 0), im["height"])
            if cx2 <= cx1 or cy2 <= cy1:
                note("zero-area or out-of-image boxes dropped", f"annotation id {a['id']}")
                continue
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                note("boxes clipped to the image", f"annotation id {a['id']}")
            per_image[a["image_id"]].append({"box": [cx1, cy1, cx2, cy2], "label": int(a["category_id"])})
        ids = sorted(images)
        if train:
            for i in ids:
                if not per_image[i]:
                    note("images without boxes left out of training", f"image id {i}")
            ids = [i for i in ids if per_image[i]]
        for what, n in sorted(counts.items()):
            shown = examples[what][:3]
            more = ", ..." if n > len(shown) else ""
            log.info("%s: %d %s (%s%s)", f, n, what, ", ".join(shown), more)
        self.counts = dict(counts)
        self.ids, self.images, self.per_image = ids, images, per_image
        self.gt = {"images": [images[i] for i in sorted(images)], "annotations": gt_anns,
                   "categories": [dict(c) for c in cats]}
        self.classes = [c["name"] for c in self.categories]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[tuple[Image.Image, dict[str, Any]] | None, int, str]:
        image_id = self.ids[index]
        info = self.images[image_id]
        path = self.image_dir / info["file_name"]
        try:
            img = open_image(path)
        except (ValueError, FileNotFoundError) as e:
            return None, image_id, f"{path} (image id {image_id}: {e})"
        anns = self.per_image[image_id]
        h, w = img.height, img.width
        boxes = torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a["label"] for a in anns], dtype=torch.int64)
        if (w, h) != (info["width"], info["height"]):
            said = f"{info['width']}x{info['height']}"
            if self.strict:
                return None, image_id, (f"{path} (image id {image_id}: the image is {w}x{h} but {self.ann_file.name} "
                                        f"says {said}; --strict refuses it)")
            # The pixels are the truth: boxes clipped to the real image, those left empty dropped.
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if image_id not in self._size_warned:
                self._size_warned.add(image_id)
                log.warning("%s: image id %d is %dx%d but %s says %s: read at its real size (%d box(es) kept within "
                            "it, %d outside it dropped; --strict refuses such images)", path, image_id, w, h,
                            self.ann_file.name, said, int(keep.sum()), int((~keep).sum()))
            boxes, labels = boxes[keep], labels[keep]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": labels,
            "image_id": image_id,
        }
        return (img, target), image_id, str(path)


def train_transform(flip: bool = True) -> v2.Transform:
    """FCOS's training augmentation: horizontal flip (the multi-scale resize is the model's,
    see :data:`RECIPES`), boxes moved by ``transforms.v2``; boxes that lost their area are removed."""
    return v2.Compose([
        v2.ToImage(), *([v2.RandomHorizontalFlip(0.5)] if flip else []), v2.ToDtype(torch.float32, scale=True),
        v2.SanitizeBoundingBoxes(min_size=1.0),
    ])


def eval_transform() -> v2.Transform:
    """The image as a float tensor in [0, 1] (FCOS resizes and normalises it itself)."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def apply_pair(transform: v2.Transform) -> Any:
    """``transform`` over an ``(image, target)`` sample (TransformedDataset passes the sample whole)."""
    def run(sample: tuple[Image.Image, dict[str, Any]]) -> tuple[torch.Tensor, dict[str, Any]]:
        img, target = sample
        return transform(img, target)
    return run


def collate_detection(items: list[tuple[Any, Any, str]]) -> Batch:
    """A list of image tensors and a list of target dicts (torchvision's detector input: the
    images may differ in size); unreadable images are left out and named in ``skipped``."""
    good = [it[0] for it in items if it[0] is not None]
    skipped = [it[2] for it in items if it[0] is None]
    if not good:
        return Batch(None, [], skipped)
    images = [img for img, _ in good]
    targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"], "image_id": t["image_id"]}
               for _, t in good]
    return Batch(images, targets, skipped)


def find_coco_split(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of ``split`` under ``root``: COCO 2017's layout
    (``annotations/instances_train2017.json`` + ``train2017/``) or the same without the year."""
    r = Path(root).expanduser()
    tried = []
    for suffix in ("2017", ""):
        ann, images = r / "annotations" / f"instances_{split}{suffix}.json", r / f"{split}{suffix}"
        if ann.is_file():
            return ann, images
        tried.append(str(ann))
    raise FileNotFoundError(f"--data-dir: no {split} annotations under {r} (looked for {', '.join(tried)})")


def open_coco(split: str, data_dir: str | os.PathLike[str] | None) -> CocoDetection:
    if data_dir is None:
        raise ValueError("--data-dir: the coco data set needs the folder holding annotations/ and the images")
    ann, images = find_coco_split(data_dir, split)
    return CocoDetection(ann, images, train=split == "train")


# ---------------------------------------------------------------- digit scenes
def _ink_box(patch: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box (x1, y1, x2, y2, exclusive) of a patch's ink (pixels above 1/4 of its peak)."""
    mask = patch > 0.25 * patch.max() if patch.max() > 0 else np.zeros_like(patch, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _scenes(split: str, count: int, size: int, digits: tuple[int, int], scale: tuple[int, int],
            rng: np.random.Generator) -> tuple[list[np.ndarray], list[list[tuple[list[float], int]]]]:
    pixels, labels = digits_pixels(split)
    canvases, boxes = [], []
    for _ in range(count):
        canvas = np.zeros((size, size), dtype=np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        anns = []
        for _ in range(int(rng.integers(digits[0], digits[1] + 1))):
            for _try in range(20):  # a free spot: pasted patches never overlap, so every box is exact
                s = int(rng.integers(scale[0], scale[1] + 1))
                x, y = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
                if all(x + s <= a or c <= x or y + s <= b or d <= y for a, b, c, d in placed):
                    break
            else:
                continue
            k = int(rng.integers(len(labels)))
            patch = np.asarray(Image.fromarray(pixels[k], "L").resize((s, s), Image.Resampling.BILINEAR))
            ink = _ink_box(patch)
            if ink is None:
                continue
            placed.append((x, y, x + s, y + s))
            region = canvas[y:y + s, x:x + s]
            np.maximum(region, patch, out=region)
            x1, y1, x2, y2 = ink
            anns.append(([float(x + x1), float(y + y1), float(x2 - x1), float(y2 - y1)], int(labels[k]) + 1))
        canvases.append(canvas)
        boxes.append(anns)
    return canvases, boxes


def write_digit_scenes(root: str | os.PathLike[str], train_images: int = 500, val_images: int = 100,
                       size: int = 64, digits: tuple[int, int] = (1, 3), scale: tuple[int, int] = (14, 30),
                       seed: int = 0, one_category: bool = False) -> Path:
    """Write "digit scenes" in COCO format under ``root``: ``train/``, ``val/`` (PNG canvases)
    and ``annotations/instances_{train,val}.json``.

    Each ``size`` x ``size`` canvas holds ``digits`` (min, max) of the bundled handwritten
    digits (:func:`tdaf.data.digits_pixels`; the training scenes use the training digits,
    the validation scenes the test digits), each scaled to ``scale`` (min, max) pixels
    and pasted where it overlaps no other; its box is the tight box of its ink, its
    category the digit (ids 1..10 for "0".."9"), or with ``one_category`` the one category
    "digit" (id 1). The same arguments write the same files.
    The folder is written whole, then renamed into place, so a reader never sees half a set.
    """
    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"root: {root} exists and is not empty; write_digit_scenes makes a new folder")
    if not (0 < digits[0] <= digits[1]) or not (8 <= scale[0] <= scale[1] <= size):
        raise ValueError(f"digits, scale: got {digits}, {scale}; allowed: 1 <= min <= max digits, "
                         f"8 <= min <= max scale <= size ({size})")
    with staged_dir(root) as tmp:
        rng = np.random.default_rng(seed)
        ann_id = 1
        for split, count in (("train", train_images), ("val", val_images)):
            (tmp / split).mkdir()
            canvases, boxes = _scenes(split, count, size, digits, scale, rng)
            images, annotations = [], []
            for i, (canvas, anns) in enumerate(zip(canvases, boxes)):
                name = f"{i:06d}.png"
                Image.fromarray(canvas, "L").save(tmp / split / name)
                images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
                for bbox, cat in anns:
                    annotations.append({"id": ann_id, "image_id": i + 1, "bbox": bbox,
                                        "category_id": 1 if one_category else cat,
                                        "area": bbox[2] * bbox[3], "iscrowd": 0})
                    ann_id += 1
            (tmp / "annotations").mkdir(exist_ok=True)
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(
                {"images": images, "annotations": annotations,
                 "categories": ONE_CATEGORY if one_category else DIGIT_CATEGORIES}))
    return root


def open_digit_scenes(split: str, data_dir: str | os.PathLike[str] | None,
                      one_category: bool = False) -> CocoDetection:
    """The digit scenes under ``data_dir`` (default ``$TDAF_DATA/digit_scenes[_1c]``), written there on first use."""
    name = "digit_scenes_1c" if one_category else "digit_scenes"
    root = Path(data_dir).expanduser() if data_dir is not None else data_home() / name
    if not (root / "annotations" / f"instances_{split}.json").is_file():
        if root.exists() and any(root.iterdir()):
            raise ValueError(f"--data-dir: {root} holds files but no digit scenes "
                             f"(annotations/instances_{split}.json); give an empty or new folder")
        try:
            write_digit_scenes(root, one_category=one_category)
            log.info("wrote the digit scenes to %s", root)
        except (FileExistsError, OSError):
            if not (root / "annotations" / f"instances_{split}.json").is_file():  # not another process's
                raise
    ann, images = find_coco_split(root, split)
    return CocoDetection(ann, images, train=split == "train")


register_dataset(DatasetSpec(
    "digit_scenes", TASK, open_digit_scenes, needs_dir=False,
    help="1-3 handwritten digits pasted on 64x64 canvases, COCO format (written on first use; bundled, nothing downloaded)",
    defaults={"recipe": "digit_scenes"},
))
register_dataset(DatasetSpec(
    "digit_scenes_1c", TASK, lambda split, data_dir: open_digit_scenes(split, data_dir, one_category=True),
    needs_dir=False,
    help="the digit scenes with one category, 'digit' (the quick runs': written on first use, nothing downloaded)",
    defaults={"recipe": "digit_scenes"},
))
register_dataset(DatasetSpec(
    "coco", TASK, open_coco, needs_dir=True,
    help="COCO-format folder: annotations/instances_{train,val}[2017].json and {train,val}[2017]/",
    defaults={"recipe": "fcos_ms"},
))
