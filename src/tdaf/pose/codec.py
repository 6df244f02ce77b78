"""Top-down keypoint geometry, as SimpleBaseline (Xiao et al. 2018) and mmpose's
``MSRAHeatmap`` codec do it: person boxes to (centre, scale), the affine crop, Gaussian
target heat-maps, and decoding (arg-max plus the quarter-pixel offset).

Coordinates are in pixels with integer values at pixel centres (the convention of
COCO keypoints and of ``cv2.warpAffine``); a crop of output size ``(w, h)`` maps the box
centre to ``(w / 2, h / 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "box_to_center_scale", "affine_matrix", "apply_affine", "invert_affine", "encode_heatmaps", "decode_heatmaps",
    "flip_heatmaps", "crop_to_image",
]

PADDING = 1.25  # the box is enlarged 1.25x around its centre (SimpleBaseline, mmpose)


def box_to_center_scale(box: Sequence[float], aspect_ratio: float, padding: float = PADDING) -> tuple[np.ndarray, np.ndarray]:
    """``(centre, scale)`` in pixels of a COCO ``[x, y, w, h]`` box: the box grown to the
    crop's aspect ratio (width / height), then by ``padding``."""
    x, y, w, h = (float(v) for v in box[:4])
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float64) * padding


def affine_matrix(center: np.ndarray, scale: np.ndarray, rotation: float, output_size: tuple[int, int],
                  flip: bool = False) -> np.ndarray:
    """The 2x3 matrix taking image coordinates to crop coordinates: the region of ``scale``
    (w, h) pixels around ``center``, rotated by ``rotation`` degrees (counter-clockwise, the
    reference's sign), mirrored left-right if ``flip``, to ``output_size`` (w, h)."""
    out_w, out_h = output_size
    s = out_w / float(scale[0])
    r = math.radians(rotation)
    cos, sin = math.cos(r), math.sin(r)
    linear = s * np.array([[cos, sin], [-sin, cos]], dtype=np.float64)
    if flip:
        linear = linear @ np.diag([-1.0, 1.0])
    shift = np.array([out_w * 0.5, out_h * 0.5]) - linear @ np.asarray(center, dtype=np.float64)
    return np.concatenate([linear, shift[:, None]], axis=1)


def invert_affine(m: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(m[:, :2])
    return np.concatenate([inv, (-inv @ m[:, 2])[:, None]], axis=1)


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``points`` (..., 2) through the 2x3 matrix ``m``."""
    return points @ m[:, :2].T + m[:, 2]


def pil_affine_data(m: np.ndarray) -> tuple[float, ...]:
    """``Image.transform(size, Image.AFFINE, data)`` coefficients for the crop ``m``: PIL maps
    each output pixel back to the input with pixel centres at +0.5, so the centre
    convention is converted on both sides."""
    inv = invert_affine(m)
    a = inv[:, :2]
    c = inv[:, 2] - a @ np.array([0.5, 0.5]) + 0.5
    return (a[0, 0], a[0, 1], c[0], a[1, 0], a[1, 1], c[1])


def crop_to_image(box: Sequence[float], width: int, height: int) -> list[float] | None:
    """A COCO ``[x, y, w, h]`` box with its corners clipped to the image, as mmpose's COCO
    loader does, or None when nothing of it is inside (an empty box, or one wholly outside
    the image: clipping would leave a zero-width sliver at the border)."""
    x, y, w, h = (float(v) for v in box[:4])
    x1, y1 = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
    x2, y2 = min(max(x + w, 0.0), width - 1.0), min(max(y + h, 0.0), height - 1.0)
    if w <= 0 or h <= 0 or x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def encode_heatmaps(keypoints: np.ndarray, visible: np.ndarray, heatmap_size: tuple[int, int], stride: float,
                    sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian target heat-maps (J, h, w) and target weights (J,) of keypoints in crop
    pixels (J, 2), as SimpleBaseline's ``generate_target``, to the bit: each joint's
    Gaussian of ``sigma`` heat-map pixels is centred on the heat-map pixel
    ``int(x / stride + 0.5)`` (truncated, as the reference), cut to its window of radius
    ``int(3 sigma)`` and computed in float32. A joint that is not visible gets weight 0
    and an empty map; so does one whose window ``[mu - r, mu + r + 1)`` lies wholly
    outside the map (the reference's test: a joint whose window ends exactly at the map's
    edge keeps weight 1 with an empty map)."""
    w, h = heatmap_size
    points = np.asarray(keypoints, dtype=np.float64)  # the reference's joints are float64
    num = points.shape[0]
    target = np.zeros((num, h, w), dtype=np.float32)
    weight = (np.asarray(visible) > 0).astype(np.float32)
    radius = int(sigma * 3)
    cols, rows = np.arange(w), np.arange(h)
    denominator = np.float32(2 * sigma**2)
    for j in range(num):
        if weight[j] == 0:
            continue
        mu = (points[j] / stride + 0.5).astype(np.int64)  # int(): truncation towards zero
        if mu[0] - radius >= w or mu[1] - radius >= h or mu[0] + radius + 1 < 0 or mu[1] + radius + 1 < 0:
            weight[j] = 0
            continue
        dx, dy = cols - mu[0], rows - mu[1]
        # float32 throughout, as the reference (its window offsets are float32): equal bits
        g = np.exp(-((dx.astype(np.float32) ** 2)[None, :] + (dy.astype(np.float32) ** 2)[:, None]) / denominator)
        # the 6-sigma window: beyond it the target is exactly 0
        g[(np.abs(dy) > radius)[:, None] | (np.abs(dx) > radius)[None, :]] = 0
        target[j] = g
    return target, weight


def decode_heatmaps(heatmaps: torch.Tensor, stride: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in crop pixels (B, J, 2) and their scores (B, J) from heat-maps
    (B, J, h, w), as SimpleBaseline's ``get_max_preds`` and ``get_final_preds``, to the
    bit: the (first) arg-max, at (0, 0) when the maximum is not positive, moved a quarter
    pixel towards the higher neighbour in x and in y when the arg-max lies strictly inside
    ``1 < x < w - 1`` and ``1 < y < h - 1`` (both, or no shift at all), times ``stride``."""
    b, j, h, w = heatmaps.shape
    hm = heatmaps.float()
    flat = hm.reshape(b, j, -1)
    idx = flat.argmax(dim=2)  # the first maximum, as numpy's argmax
    scores = flat.gather(2, idx[..., None])[..., 0]
    positive = scores > 0
    x = torch.where(positive, idx % w, 0)
    y = torch.where(positive, torch.div(idx, w, rounding_mode="floor"), 0)
    bi = torch.arange(b, device=hm.device)[:, None].expand(b, j)
    ji = torch.arange(j, device=hm.device)[None, :].expand(b, j)
    inner = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)
    dx = hm[bi, ji, y, (x + 1).clamp(max=w - 1)] - hm[bi, ji, y, (x - 1).clamp(min=0)]
    dy = hm[bi, ji, (y + 1).clamp(max=h - 1), x] - hm[bi, ji, (y - 1).clamp(min=0), x]
    zero = torch.zeros_like(dx)
    xs = x.float() + torch.where(inner, torch.sign(dx) * 0.25, zero)
    ys = y.float() + torch.where(inner, torch.sign(dy) * 0.25, zero)
    return torch.stack([xs, ys], dim=-1) * stride, scores


def flip_heatmaps(heatmaps: torch.Tensor, flip_pairs: Sequence[tuple[int, int]], shift: bool = True) -> torch.Tensor:
    """Heat-maps of a left-right mirrored input brought back to the original's frame: mirrored,
    left/right joints swapped, and (``shift``) moved one pixel right, as the reference does
    to align the mirrored maps with the unmirrored ones."""
    out = heatmaps.flip(-1)
    order = list(range(heatmaps.shape[1]))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    out = out[:, order]
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
    return out
