"""Top-k predictions of a trained classifier for image files and folders (``tdaf predict``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..io.images import ImageList, open_image
from ..io.progress import progress_bar

__all__ = ["predict"]

log = logging.getLogger("tdaf.predict")


class _Images(Dataset):
    """Decoded, preprocessed images; a failure is returned (not raised) so the main
    process decides whether it is fatal (a named file) or skipped (found in a folder)."""

    def __init__(self, images: ImageList, transform: Callable[[Any], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(open_image(self.images.files[i])), None
        except (ValueError, FileNotFoundError) as e:
            return i, None, str(e)


def _collate(batch: list[tuple[int, torch.Tensor | None, str | None]]) -> list[tuple[int, torch.Tensor | None, str | None]]:
    return batch


def predict(
    model: torch.nn.Module,
    images: ImageList,
    transform: Callable[[Any], torch.Tensor],
    class_names: list[str],
    *,
    topk: int = 5,
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Top-k predictions for ``images`` (softmax scores). Returns ``(results, skipped)``:
    ``results[i] = {"file", "topk": [{"label", "index", "score"}, ...]}`` in input order,
    ``skipped`` the undecodable files found in folders. A bad file named directly raises
    ValueError."""
    k = min(topk, len(class_names))
    loader = DataLoader(_Images(images, transform), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, shuffle=False)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    model = model.to(device).eval()
    bar = progress_bar(len(images), desc="predict", unit="img", enabled=progress)
    with torch.no_grad():
        for batch in loader:
            good = []
            for i, x, err in batch:
                if err is None:
                    good.append((i, x))
                elif images.from_folder[i]:
                    log.warning("skipped %s", err)
                    skipped.append({"file": str(images.files[i]), "error": err})
                else:
                    raise ValueError(err)
            if good:
                x = torch.stack([t for _, t in good]).to(device)
                probs = torch.softmax(model(x).float(), dim=1).cpu()
                scores, idx = probs.topk(k, dim=1)
                for (i, _), s_row, i_row in zip(good, scores.tolist(), idx.tolist()):
                    results.append({
                        "file": str(images.files[i]),
                        "topk": [{"label": class_names[c], "index": c, "score": s} for s, c in zip(s_row, i_row)],
                    })
            bar.update(len(batch))
    bar.close()
    return results, skipped
