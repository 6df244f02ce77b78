"""Reading user images for ``tdaf predict`` and ``tdaf attention``.

Rules, shared by both commands (and documented in docs/predict.md):

* A file named on the command line must be a readable image; anything else (a text
  file, a truncated JPEG, a missing path) is an error that names the file.
* A folder is searched recursively for files with an image extension
  (:data:`IMAGE_EXTENSIONS`, torchvision's list), in sorted order. Other files in it are
  ignored and counted; an image-named file that cannot be decoded is skipped with a
  warning and counted, so one bad file does not stop a large folder.
* Every PIL mode is converted to RGB the way training converts it
  (:func:`to_rgb`): greyscale is repeated, palette and CMYK are
  converted, alpha is dropped, 16-bit greyscale (``I;16``, ``I``) is scaled to 8 bits.
  EXIF orientation tags are ignored, as the training loaders ignore them, so a
  prediction on a file equals its evaluation by ``tdaf eval``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "ImageList", "collect_images", "open_image", "unique_stems", "to_rgb"]


IMAGE_EXTENSIONS: tuple[str, ...] = tuple(sorted({e.lower() for e in IMG_EXTENSIONS} | {".gif"}))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, CMYK, I;16 ...) to RGB; 16-bit greyscale is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # PIL's convert("L") clips 16-bit values instead of scaling them.
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


@dataclass
class ImageList:
    """Images to process: ``files`` in order, and which of them came from a folder
    (a decode failure there is skipped, not fatal). ``ignored`` counts non-image files
    met while walking folders."""

    files: list[Path] = field(default_factory=list)
    from_folder: list[bool] = field(default_factory=list)
    ignored: int = 0

    def __len__(self) -> int:
        return len(self.files)


def collect_images(paths: Sequence[str | os.PathLike[str]], what: str = "IMAGE") -> ImageList:
    """Expand files and folders (recursively) into a list of image files.

    Raises FileNotFoundError for a path that does not exist and ValueError when nothing
    to read is found; ``what`` names the argument in messages.
    """
    if not paths:
        raise UserError(f"{what}: give at least one image file or folder")
    out = ImageList()
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{what}: no such file or folder: {p}")
        if p.is_dir():
            found, ignored = _walk(p)
            out.files += found
            out.from_folder += [True] * len(found)
            out.ignored += ignored
        else:
            out.files.append(p)
            out.from_folder.append(False)
    if not out.files:
        raise UserError(
            f"{what}: found no image files in {', '.join(map(str, paths))} "
            f"(looked for {', '.join(IMAGE_EXTENSIONS)}; {out.ignored} other file(s) ignored)"
        )
    return out


def _walk(folder: Path) -> tuple[list[Path], int]:
    found, ignored = [], 0
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in sorted(names):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(root) / name)
            else:
                ignored += 1
    return found, ignored


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and decode one image file as RGB; ValueError naming the file if it is not an image."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now, so a truncated file fails here with its name
    except FileNotFoundError:
        raise FileNotFoundError(f"image: no such file: {p}") from None
    except IsADirectoryError:
        raise UserError(f"image: {p} is a folder, expected an image file") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"image: {p} is too large to decode safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise UserError(
            f"image: {p} is not an image file PIL can read; supported: {', '.join(IMAGE_EXTENSIONS)}"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"image: {p} is damaged or truncated and cannot be decoded ({detail})") from None
    try:
        return to_rgb(img)
    except (OSError, ValueError) as e:
        raise UserError(f"image: {p} has mode {img.mode!r}, which cannot be converted to RGB ({e})") from None


def unique_stems(files: Iterable[Path]) -> list[str]:
    """Output names for input files: the file stem, made unique with ``-2``, ``-3``, ...
    when two inputs share a stem (``a/x.png`` and ``b/x.jpg``)."""
    used: set[str] = set()
    out = []
    for f in files:
        stem = f.stem or "image"
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        out.append(name)
    return out
