"""Checks of dense-task annotations where they are read (COCO boxes, scores, keypoints).

Each check raises one ValueError line naming where the value is (file, annotation or
image id), the field, what was given and what is allowed; a boolean is not a number
(``True`` is an ``int`` to Python, never a coordinate to a user).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import UserError

__all__ = ["is_number", "check_number", "check_box", "check_keypoints", "check_size", "input_size_hw", "VISIBILITY"]

# COCO keypoint visibility: 0 not labelled, 1 labelled but hidden, 2 labelled and visible.
VISIBILITY = (0, 1, 2)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(v: Any, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def check_number(v: Any, where: str, field: str, finite: bool = True) -> float:
    """``v`` as a float; ValueError unless it is a (finite) number."""
    if not is_number(v) or (finite and not math.isfinite(v)):
        raise UserError(f"{where}: {field} {_show(v)}; allowed: a finite number")
    return float(v)


def check_box(box: Any, where: str, field: str = "bbox", positive: bool = True) -> list[float]:
    """A COCO ``[x, y, width, height]`` box of four finite numbers (with ``positive``, a
    width and height above 0) as floats."""
    if (not isinstance(box, (list, tuple)) or len(box) != 4 or not all(is_number(v) for v in box)
            or not all(math.isfinite(v) for v in box)):
        raise UserError(f"{where}: {field} {_show(box)}; allowed: [x, y, width, height], 4 finite numbers")
    if positive and not (box[2] > 0 and box[3] > 0):
        raise UserError(f"{where}: {field} {_show(box)} has width {box[2]:g} and height {box[3]:g}; allowed: "
                        f"width > 0 and height > 0")
    return [float(v) for v in box]


def check_keypoints(kpts: Any, joints: int, where: str, field: str = "keypoints") -> list[float]:
    """COCO keypoints: ``3 x joints`` numbers ``x1, y1, v1, ...``, x and y finite, each
    visibility ``v`` 0, 1 or 2."""
    if not isinstance(kpts, (list, tuple)) or len(kpts) != 3 * joints:
        size = f"{len(kpts)} values" if isinstance(kpts, (list, tuple)) else type(kpts).__name__
        raise UserError(f"{where}: {field} has {size}; allowed: 3 x {joints} = {3 * joints} numbers "
                        f"(x, y, visibility per joint of the category)")
    for k, v in enumerate(kpts):
        joint, part = divmod(k, 3)
        if not is_number(v) or not math.isfinite(v):
            name = ("x", "y", "visibility")[part]
            raise UserError(f"{where}: {field}[{k}] (joint {joint + 1} {name}) is {_show(v)}; allowed: a finite number")
        if part == 2 and v not in VISIBILITY:
            raise UserError(f"{where}: {field}[{k}] (joint {joint + 1} visibility) is {v!r}; allowed: 0 (not "
                            f"labelled), 1 (labelled, hidden) or 2 (visible)")
    return [float(v) for v in kpts]


def check_size(width: Any, height: Any, where: str) -> tuple[int, int]:
    """An image entry's ``width`` and ``height``: positive whole numbers."""
    for name, v in (("width", width), ("height", height)):
        if not is_number(v) or not math.isfinite(v) or v < 1 or int(v) != v:
            raise UserError(f"{where}: {name} {_show(v)}; allowed: a whole number >= 1 (pixels)")
    return int(width), int(height)


def input_size_hw(values: Sequence[int] | None, what: str = "--input-size") -> tuple[int, int] | None:
    """``--input-size H [W]`` as (H, W); ValueError for anything but one or two positive ints."""
    if values is None:
        return None
    if isinstance(values, int):
        values = [values]
    if not 1 <= len(values) <= 2 or any(v < 1 for v in values):
        raise UserError(f"{what}: got {' '.join(map(str, values))}; allowed: H or H W, positive integers")
    return (values[0], values[-1])
