"""Pictures of predictions that people can read: boxes with class and score labels,
keypoint skeletons in COCO's per-limb colours, and a labelled strip of attention maps.

Pure drawing with PIL (a core dependency), so ``tdaf predict`` draws without matplotlib;
nothing here imports a task. Everything is deterministic: the same input gives the same
pixels (PIL draws without anti-aliasing; labels are placed by a fixed greedy order).

Small images (the 64x64 digit scenes, 160x160 stick figures) are drawn **upscaled** by
an integer factor with nearest-neighbour resampling, so the short side is at least
``min_side`` pixels (512 by default) and an 11-pixel-high label fits next to a 15-pixel
box. Nearest and integer because every input pixel then becomes an exact ``f x f`` block:
the picture shows the pixels the model saw (no invented blur), and a box edge at pixel
coordinate ``x`` lands exactly on output column ``x * f``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "PALETTE", "class_colour", "upscale", "default_font", "place_labels", "draw_boxes", "COCO_KEYPOINT_NAMES",
    "COCO_LIMB_COLOURS", "keypoint_colour", "limb_colour", "draw_skeletons", "jet", "attention_strip",
]

RGB = tuple[int, int, int]
Rect = tuple[int, int, int, int]

# Tableau 10 (matplotlib's "tab10"): ten distinct hues, one per digit class; its grey
# (127, 127, 127) is replaced by gold, since a grey box vanishes on a grey scene.
PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (255, 200, 0), (188, 189, 34), (23, 190, 207),
)


def class_colour(key: int | str) -> RGB:
    """The palette colour of a class: ``PALETTE[id % 10]`` for an integer category id, a
    stable hash (CRC-32, not Python's salted ``hash``) of the name for a string."""
    if isinstance(key, (int, np.integer)):
        return PALETTE[int(key) % len(PALETTE)]
    return PALETTE[zlib.crc32(str(key).encode()) % len(PALETTE)]


def _text_colour(bg: RGB) -> RGB:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    return (0, 0, 0) if 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2] > 140 else (255, 255, 255)


def _rgb(image: Any, name: str = "image") -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        arr = arr[..., :3] if arr.ndim == 3 and arr.shape[2] != 1 else arr.reshape(arr.shape[:2])
        return Image.fromarray(arr).convert("RGB")
    raise ValueError(f"{name}: expected a PIL image or an (H, W) / (H, W, 3) array, got shape {arr.shape}")


def upscale(image: Any, min_side: int = 512) -> tuple[Image.Image, int]:
    """``image`` as RGB, enlarged by the smallest integer factor ``f`` that makes its short
    side at least ``min_side`` (nearest-neighbour; ``f = 1`` for large images). Returns
    ``(picture, f)``: a point ``(x, y)`` of the input is at ``(x * f, y * f)``."""
    if min_side < 1:
        raise ValueError(f"min_side: got {min_side}; allowed: >= 1")
    img = _rgb(image)
    f = max(1, math.ceil(min_side / max(1, min(img.size))))
    if f > 1:
        img = img.resize((img.width * f, img.height * f), Image.Resampling.NEAREST)
    return img, f


def default_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at ``size`` pixels (Pillow >= 10.1 with FreeType), available
    everywhere; the small bitmap default font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: load_default() takes no size
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return int(x1), int(y1)


def _intersects(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]],
                 bounds: tuple[int, int]) -> list[Rect]:
    """Where each box's label goes: ``(x1, y1, x2, y2)`` rectangles (exclusive ends) of
    ``sizes[i]`` = (width, height), inside ``bounds`` = (W, H), that overlap no other label.

    Greedy, in the given order (put the most important box first): for each box try above
    it (outside), inside its top, below it (outside), inside its bottom, left-aligned and
    then right-aligned, each shifted into the image; keep the first that overlaps no label
    placed so far. When all eight collide (a stack of boxes), the label slides up and down
    from the box's top edge in half-label steps to the nearest free place. Only when the
    image has no free place at all does a label overlap another."""
    if len(boxes) != len(sizes):
        raise ValueError(f"sizes: got {len(sizes)} label sizes for {len(boxes)} boxes")
    W, H = bounds
    placed: list[Rect] = []

    def clamp(x: float, y: float, w: int, h: int) -> Rect:
        x = int(round(min(max(x, 0), max(W - w, 0))))
        y = int(round(min(max(y, 0), max(H - h, 0))))
        return x, y, x + w, y + h

    def tries(x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> Iterator[Rect]:
        for x in (x1, x2 - w):
            for y in (y1 - h, y1, y2, y2 - h):
                yield clamp(x, y, w, h)
        step = max(1, h // 2)
        for k in range(1, 2 * (H // step) + 2):  # nearest first: +1, -1, +2, -2, ... steps
            dy = (k + 1) // 2 * step * (1 if k % 2 else -1)
            for x in (x1, x2 - w):
                yield clamp(x, y1 - h + dy, w, h)

    for (x1, y1, x2, y2), (w, h) in zip(boxes, sizes):
        first = clamp(x1, y1 - h, w, h)
        free = next((r for r in tries(x1, y1, x2, y2, w, h) if not any(_intersects(r, p) for p in placed)), first)
        placed.append(free)
    return placed


def _check_boxes(boxes: Any, name: str = "boxes") -> np.ndarray:
    try:
        b = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected an (N, 4) array of x1, y1, x2, y2; got {type(boxes).__name__} ({e})")
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name}: expected an (N, 4) array of x1, y1, x2, y2; got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name}: got a non-finite coordinate (nan or inf)")
    return b


def draw_boxes(
    image: Any,
    boxes: Any,
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
    *,
    classes: Sequence[int | str] | None = None,
    min_side: int = 512,
    width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """``image`` (PIL or array, grey or RGB) with ``boxes`` (N, 4: x1, y1, x2, y2 in its
    pixel coordinates) drawn and labelled ``"label 0.93"``.

    The picture is upscaled first (see :func:`upscale`). Each box and its label background
    take its class colour (:func:`class_colour` of ``classes[i]``, the category id, or of
    ``labels[i]`` when ``classes`` is None). Labels are placed by :func:`place_labels` in
    decreasing score order, so they never overlap one another and the best detections get
    the places next to their boxes; boxes are drawn under every label. ``width`` (box
    outline) and ``font_size`` default to sizes that read at the picture's size."""
    b = _check_boxes(boxes)
    n = len(b)
    if len(labels) != n:
        raise ValueError(f"labels: got {len(labels)} labels for {n} boxes")
    if scores is not None and len(scores) != n:
        raise ValueError(f"scores: got {len(scores)} scores for {n} boxes")
    if classes is not None and len(classes) != n:
        raise ValueError(f"classes: got {len(classes)} classes for {n} boxes")
    img, f = upscale(image, min_side)
    short = min(img.size)
    width = width if width is not None else max(2, round(short / 200))
    font = default_font(font_size if font_size is not None else max(12, round(short / 32)))
    draw = ImageDraw.Draw(img)
    colours = [class_colour(classes[i] if classes is not None else labels[i]) for i in range(n)]
    scaled = [(x1 * f, y1 * f, x2 * f, y2 * f) for x1, y1, x2, y2 in b.tolist()]
    order = sorted(range(n), key=lambda i: -float(scores[i])) if scores is not None else list(range(n))
    for i in reversed(order):  # the best box is drawn last, on top
        x1, y1, x2, y2 = scaled[i]
        r = (round(x1), round(y1), max(round(x1), round(x2) - 1), max(round(y1), round(y2) - 1))
        draw.rectangle(r, outline=colours[i], width=width)
    texts = [f"{labels[i]} {float(scores[i]):.2f}" if scores is not None else str(labels[i]) for i in range(n)]
    pad = max(1, width)
    sizes = []
    for i in order:
        tw, th = _text_size(font, texts[i])
        sizes.append((tw + 2 * pad, th + 2 * pad))
    rects = place_labels([scaled[i] for i in order], sizes, img.size)
    for i, r in zip(order, rects):
        draw.rectangle((r[0], r[1], r[2] - 1, r[3] - 1), fill=colours[i])
        draw.text((r[0] + pad, r[1] + pad), texts[i], fill=_text_colour(colours[i]), font=font)
    return img


# COCO keypoint colours as in mmpose's COCO dataset meta (open-mmlab/mmpose,
# configs/_base_/datasets/coco.py, keypoint_info / skeleton_info): the person's left side
# green, the right side orange, the face and the torso blue.
LEFT: RGB = (0, 255, 0)
RIGHT: RGB = (255, 128, 0)
CENTRE: RGB = (51, 153, 255)
COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
COCO_LIMB_COLOURS: dict[frozenset[str], RGB] = {frozenset(k): c for k, c in [
    (("left_ankle", "left_knee"), LEFT), (("left_knee", "left_hip"), LEFT),
    (("right_ankle", "right_knee"), RIGHT), (("right_knee", "right_hip"), RIGHT),
    (("left_hip", "right_hip"), CENTRE), (("left_shoulder", "left_hip"), CENTRE),
    (("right_shoulder", "right_hip"), CENTRE), (("left_shoulder", "right_shoulder"), CENTRE),
    (("left_shoulder", "left_elbow"), LEFT), (("right_shoulder", "right_elbow"), RIGHT),
    (("left_elbow", "left_wrist"), LEFT), (("right_elbow", "right_wrist"), RIGHT),
    (("left_eye", "right_eye"), CENTRE), (("nose", "left_eye"), CENTRE), (("nose", "right_eye"), CENTRE),
    (("left_eye", "left_ear"), CENTRE), (("right_eye", "right_ear"), CENTRE),
    (("left_ear", "left_shoulder"), CENTRE), (("right_ear", "right_shoulder"), CENTRE),
]}
_FACE = ("nose", "eye", "ear", "mouth", "head")


def _side(name: str) -> str:
    if any(k in name for k in _FACE):
        return "centre"
    return "left" if name.startswith("left") else "right" if name.startswith("right") else "centre"


def keypoint_colour(name: str) -> RGB:
    """A joint's colour by side (mmpose's COCO meta): ``left_*`` green, ``right_*``
    orange, the face and unsided joints blue."""
    return {"left": LEFT, "right": RIGHT, "centre": CENTRE}[_side(name)]


def limb_colour(a: str, b: str) -> RGB:
    """A limb's colour: COCO's table for COCO joint names; otherwise green for a limb
    with both ends on the left (face excluded), orange on the right, blue else."""
    key = frozenset((a, b))
    if key in COCO_LIMB_COLOURS:
        return COCO_LIMB_COLOURS[key]
    sa, sb = _side(a), _side(b)
    return keypoint_colour(a) if sa == sb and sa != "centre" else CENTRE


def draw_skeletons(
    image: Any,
    persons: Sequence[Any],
    skeleton: Sequence[Sequence[int]],
    *,
    names: Sequence[str] | None = None,
    boxes: Any = None,
    score_thr: float = 0.2,
    min_side: int = 512,
    width: int | None = None,
    radius: int | None = None,
) -> Image.Image:
    """``image`` with each person's skeleton: ``persons`` is a list of ``(K, 3)`` arrays
    ``[x, y, score]`` (a COCO visibility 0/1/2 works as a score) in image pixels,
    ``skeleton`` 0-based joint pairs, ``names`` the K joint names (default COCO's 17).

    Limbs and joints take COCO's per-side colours (:func:`limb_colour`,
    :func:`keypoint_colour`); joints scoring ``<= score_thr`` are not drawn, nor the limbs
    that end at them. ``boxes`` (optional, (P, 4) x1, y1, x2, y2) are drawn in yellow.
    The picture is upscaled first (see :func:`upscale`)."""
    kps = [np.asarray(p, dtype=np.float64) for p in persons]
    if not kps:  # nobody to draw: the (upscaled) image and the boxes alone
        k = len(names) if names is not None else 1 + max((int(j) for e in skeleton for j in e), default=0)
    else:
        k = kps[0].shape[0]
    for i, p in enumerate(kps):
        if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] != k:
            raise ValueError(f"persons: person {i} has keypoints of shape {p.shape}; expected ({k}, 3) [x, y, score]")
    if names is None:
        names = COCO_KEYPOINT_NAMES if k == len(COCO_KEYPOINT_NAMES) else [f"joint{j}" for j in range(k)]
    if len(names) != k:
        raise ValueError(f"names: got {len(names)} joint names for {k} keypoints")
    for e in skeleton:
        if len(e) != 2 or not all(0 <= int(j) < k for j in e):
            raise ValueError(f"skeleton: edge {list(e)} is not a pair of 0-based joint indices below {k}")
    img, f = upscale(image, min_side)
    short = min(img.size)
    width = width if width is not None else max(2, round(short / 160))
    radius = radius if radius is not None else width + 1
    draw = ImageDraw.Draw(img)
    if boxes is not None:
        for x1, y1, x2, y2 in _check_boxes(boxes).tolist():
            draw.rectangle((round(x1 * f), round(y1 * f), max(round(x1 * f), round(x2 * f) - 1),
                            max(round(y1 * f), round(y2 * f) - 1)), outline=(255, 255, 0), width=max(1, width // 2))

    def at(p: np.ndarray, j: int) -> tuple[float, float]:
        # the centre of the joint's pixel block in the upscaled picture
        return (p[j, 0] + 0.5) * f - 0.5, (p[j, 1] + 0.5) * f - 0.5

    for p in kps:
        shown = p[:, 2] > score_thr
        for a, b in skeleton:
            a, b = int(a), int(b)
            if shown[a] and shown[b]:
                draw.line([at(p, a), at(p, b)], fill=limb_colour(names[a], names[b]), width=width)
        for j in np.flatnonzero(shown).tolist():
            x, y = at(p, j)
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=keypoint_colour(names[j]),
                         outline=(0, 0, 0))
    return img


def jet(values: np.ndarray) -> np.ndarray:
    """The "jet" colour map (matplotlib's piecewise-linear definition, approximated by
    three clipped ramps) of values in [0, 1]: an ``(..., 3)`` uint8 array."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def _map2d(m: Any, key: tuple[int, int]) -> np.ndarray:
    a = np.asarray(m.detach().cpu() if hasattr(m, "detach") else m, dtype=np.float32)
    while a.ndim > 2:  # (B, 1, h, w) from tdaf.record_attention: the first element
        a = a[0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"maps: map {key} has shape {np.shape(m)}; expected (h, w) or (B, 1, h, w)")
    return a


def attention_strip(
    image: Any,
    maps: Mapping[tuple[int, int], Any],
    *,
    flows: int | None = None,
    title: str | None = None,
    panel: int = 192,
    alpha: float = 0.5,
    normalize: bool = False,
) -> Image.Image:
    """A labelled picture of attention maps (PIL only, for ``tdaf predict --attention``).

    ``maps`` is ``{(stage, flow): map}`` (1-based, as :func:`tdaf.record_attention` records;
    each map ``(h, w)`` or ``(B, 1, h, w)``, the first element drawn). Layout: the input on
    the left, then one row per stage and one column per flow in ``maps``; each panel is the
    map resized (bilinear) to the input and laid over its grey version in the jet colour
    map, titled "stage s · flow n (full res / 1/2 res ...)" with the map's own size and
    min-max; one colour bar on the right. ``flows`` is the model's N (default: the largest
    flow in ``maps``), used to say each flow's input resolution (flow n sees the input
    down-sampled by 2^(N - n), paper Eq. 2). All panels share the 0..1 scale of the
    sigmoid gates; ``normalize`` stretches each map to its own min..max instead."""
    if not maps:
        raise ValueError("maps: no attention maps were recorded (a TDAF model with flows=1 has none)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: got {alpha}; allowed: 0..1")
    if panel < 16:
        raise ValueError(f"panel: got {panel}; allowed: >= 16 (pixels)")
    arrays = {key: _map2d(m, key) for key, m in maps.items()}
    stages = sorted({s for s, _ in arrays})
    cols = sorted({n for _, n in arrays})
    n_flows = max(cols) if flows is None else int(flows)
    pic, f = upscale(image, panel)
    pw, ph = pic.size
    grey = np.asarray(pic.convert("L"), dtype=np.float64)[..., None].repeat(3, axis=2)
    fs = max(11, round(panel / 14))
    font, small = default_font(fs), default_font(max(10, round(fs * 0.85)))
    gap, line = max(6, fs // 2), fs + 3
    head = (line + 4) * (len(title.split("\n")) if title else 0)
    cap = 2 * line + 4  # two title lines over each panel
    bar_w = max(12, panel // 12)
    bar_text = 6 + _text_size(small, "0.75")[0] + 4 + _text_size(small, "g(x)")[1] + 2
    left = gap + pw + 2 * gap
    width = left + len(cols) * (pw + gap) + gap + bar_w + bar_text + gap
    height = gap + head + len(stages) * (cap + ph + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    ink = (0, 0, 0)
    y0 = gap
    if title:
        for t in title.split("\n"):
            draw.text((gap, y0), t, fill=ink, font=font)
            y0 += line + 4
    draw.text((gap, y0), "input", fill=ink, font=font)
    draw.text((gap, y0 + line), f"{pic.width // f}x{pic.height // f} px", fill=ink, font=small)
    canvas.paste(pic, (gap, y0 + cap))

    def res(n: int) -> str:
        return "full res" if n >= n_flows else f"1/{2 ** (n_flows - n)} res"

    for i, s in enumerate(stages):
        top = y0 + i * (cap + ph + gap)
        for j, n in enumerate(cols):
            x = left + j * (pw + gap)
            draw.text((x, top), f"stage {s} · flow {n} ({res(n)})", fill=ink, font=font)
            if (s, n) not in arrays:
                draw.text((x, top + line), f"not gated: flow {n - 1} has no stage {s}", fill=ink, font=small)
                canvas.paste(Image.fromarray((grey * 0.6 + 60).astype(np.uint8)), (x, top + cap))
                continue
            a = arrays[(s, n)]
            lo, hi = float(a.min()), float(a.max())
            up = np.asarray(Image.fromarray(a).resize((pw, ph), Image.Resampling.BILINEAR), dtype=np.float64)
            if normalize:
                up = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
            over = (1 - alpha) * grey + alpha * jet(up).astype(np.float64)
            canvas.paste(Image.fromarray(over.round().clip(0, 255).astype(np.uint8)), (x, top + cap))
            draw.text((x, top + line), f"{a.shape[0]}x{a.shape[1]} map, {lo:.2f}-{hi:.2f}", fill=ink, font=small)
    # the colour bar: 1 at the top, 0 at the bottom, beside the whole grid
    bx = left + len(cols) * (pw + gap) + gap
    by0, by1 = y0 + cap, y0 + (len(stages) - 1) * (cap + ph + gap) + cap + ph
    ramp = np.linspace(1, 0, by1 - by0)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(jet(ramp)), (bx, by0))
    draw.rectangle((bx - 1, by0 - 1, bx + bar_w, by1), outline=ink)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = round(by1 - 1 - v * (by1 - by0 - 1))
        draw.line((bx + bar_w, y, bx + bar_w + 4, y), fill=ink)
        draw.text((bx + bar_w + 6, y - fs // 2), f"{v:g}", fill=ink, font=small)
    label = "attention, per-map min..max" if normalize else "attention gate g(x), 0..1 (sigmoid)"
    tw, th = _text_size(small, label)
    tag = Image.new("RGB", (tw + 2, th + 2), (255, 255, 255))
    ImageDraw.Draw(tag).text((1, 1), label, fill=ink, font=small)
    tag = tag.rotate(90, expand=True)  # reads bottom to top, as matplotlib's colour bar label
    canvas.paste(tag, (bx + bar_w + 6 + _text_size(small, "0.75")[0] + 4, (by0 + by1 - tag.height) // 2))
    return canvas
