"""``tdaf predict`` with a detector: boxes, labels and scores per image, as JSON and as
pictures drawn by :mod:`tdaf.draw` (optionally with the ANAR maps)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ..attention import record_attention
from ..draw import attention_strip, draw_boxes
from ..io.images import ImageList, open_image, unique_stems
from ..io.outputs import Outputs, output_name
from ..io.progress import track
from .models import backbone_of

__all__ = ["predict", "draw_detections"]


def draw_detections(image: Image.Image, prediction: dict[str, Any]) -> Image.Image:
    """``image`` with the boxes of ``prediction`` (one of :func:`predict`'s results) drawn by
    :func:`tdaf.draw.draw_boxes` (a colour per class, labels that do not overlap, small
    images enlarged first): the detection task's one picture."""
    dets = prediction["detections"]
    return draw_boxes(image, [d["box"] for d in dets], [d["label"] for d in dets], [d["score"] for d in dets],
                      classes=[d.get("category_id", d["label"]) for d in dets])


@torch.inference_mode()
def predict(
    model: nn.Module,
    images: ImageList,
    class_names: Sequence[str],
    out_dir: str | os.PathLike[str] | None,
    *,
    score_thresh: float = 0.3,
    attention: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    draw: Callable[[Image.Image, dict[str, Any]], Image.Image] = draw_detections,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Detections above ``score_thresh`` for each image (``boxes`` as XYXY pixels of the
    original image); with ``out_dir``, ``<stem>_pred.png`` with the boxes drawn (and, with
    ``attention``, ``<stem>_attention.png``: every stage's and flow's ANAR maps) and
    ``predictions.json``, by the rule of :class:`tdaf.io.Outputs`: never over an image or
    any other of ``inputs`` (so ``out_dir`` may be the image folder), over an existing file
    only with ``overwrite``, all written when every image is done; ``draw(image, result)``
    makes the picture (the task's ``draw_prediction``). Returns
    ``(results, skipped)``: undecodable images inside folders are skipped, a named file that
    cannot be decoded is an error."""
    if not 0 <= score_thresh <= 1:
        raise ValueError(f"--score-thresh: got {score_thresh}; allowed: a number in [0, 1]")
    r2dns = getattr(model, "r2dns", None)
    if attention and (r2dns is None or not r2dns.has_attention):
        raise ValueError(f"--attention: {getattr(model, 'pretrained_cfg', {}).get('architecture', 'this model')} "
                         f"has no ANAR maps (a plain detector, or one flow)")
    backbone_of(model)
    model.eval().to(device)
    model.score_thresh = score_thresh  # the caller's threshold, not the one the model was built with
    out = Path(out_dir) if out_dir is not None else None
    outputs = Outputs(overwrite=overwrite)
    outputs.protect(images.files, "image")
    outputs.protect(inputs, "checkpoint")
    stems = unique_stems(images.files)
    if out is not None:  # every name checked before the first image
        outputs.claim_dir(out, "--out-dir")
        for stem in stems:
            outputs.claim(out / output_name(stem, "pred"), "--out-dir")
            if attention:
                outputs.claim(out / output_name(stem, "attention"), "--out-dir")
        outputs.claim(out / "predictions.json", "--out-dir")
    with outputs:
        results, skipped = _run(model, images, stems, class_names, out, outputs, attention, device, progress, draw)
        if out is not None:
            outputs.write_text(json.dumps({"results": results, "skipped": skipped}, indent=1), out / "predictions.json")
    return results, skipped


def _run(model: nn.Module, images: ImageList, stems: list[str], class_names: Sequence[str], out: Path | None,
         outputs: Outputs, attention: bool, device: torch.device | str, progress: bool,
         draw: Callable[[Image.Image, dict[str, Any]], Image.Image]) -> tuple[list[dict[str, Any]], list[str]]:
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path, stem, from_folder in track(list(zip(images.files, stems, images.from_folder)), desc="predict",
                                         unit="image", enabled=progress):
        try:
            pil = open_image(path)
        except ValueError as e:
            if not from_folder:
                raise
            skipped.append(f"{path} ({e})")
            continue
        img = TF.pil_to_tensor(pil)
        x = TF.to_dtype(img, torch.float32, scale=True).to(device)
        if attention:
            with record_attention(model) as maps:
                det = model([x])[0]
            maps = dict(maps)
        else:
            det = model([x])[0]
        boxes, scores, labels = det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()
        names = [class_names[i] if 0 <= i < len(class_names) and class_names[i] else str(i) for i in labels.tolist()]
        result = {"file": str(path), "width": pil.width, "height": pil.height, "detections": [
            {"box": [round(v, 2) for v in b], "label": n, "category_id": int(c), "score": round(float(s), 4)}
            for b, n, c, s in zip(boxes.tolist(), names, labels.tolist(), scores.tolist())]}
        if out is not None:
            picture = outputs.save_image(draw(pil, result), out / output_name(stem, "pred"))
            result["picture"] = str(picture)
            if attention:
                att = outputs.save_image(attention_strip(pil, maps, title=Path(path).name), out / output_name(stem, "attention"))
                result["attention"] = str(att)
        results.append(result)
    return results, skipped
