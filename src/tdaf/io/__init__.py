"""Reading and writing files, below every other part of tdaf.

:mod:`tdaf.io.files`: safe loading (``weights_only``), atomic saving, writable output
folders. :mod:`tdaf.io.outputs`: the rule for every file a command writes (never over an
input, never over an existing file without ``--overwrite``, atomic, nothing left on failure).
:mod:`tdaf.io.images`: collecting and decoding user images. :mod:`tdaf.io.table`: the one
text table layout of the commands.
"""

from .files import (
    atomic_save, atomic_write_text, clean_stale_temporaries, ensure_writable_dir, first_line, load_state_dict_file,
    safe_load,
)
from .images import IMAGE_EXTENSIONS, ImageList, collect_images, open_image, to_rgb, unique_stems
from .outputs import Outputs, output_name

__all__ = [
    "safe_load", "load_state_dict_file", "atomic_save", "atomic_write_text", "ensure_writable_dir",
    "clean_stale_temporaries", "first_line",
    "Outputs", "output_name", "IMAGE_EXTENSIONS", "ImageList", "collect_images", "open_image", "to_rgb", "unique_stems",
]
