"""Per-epoch metrics of a run: ``metrics.csv`` and TensorBoard events (written by rank 0 only)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "CSV_COLUMNS", "read_metrics_csv"]

CSV_COLUMNS = (
    "epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
    "images_per_s", "epoch_time_s", "skipped", "best_top1",
)


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv`` as floats (empty cells become NaN)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


class RunLog:
    """CSV + TensorBoard logger. On resume (``start_epoch`` > 0) rows and events after the
    resumed epoch are dropped, so the logs describe the run that produced the weights."""

    def __init__(self, out: Path, start_epoch: int = 0, global_step: int = 0, tensorboard: bool = True) -> None:
        self.csv_path = out / "metrics.csv"
        rows: list[dict[str, str]] = []
        if start_epoch > 0 and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("epoch") and int(float(r["epoch"])) <= start_epoch]
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=global_step if start_epoch > 0 else None)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def epoch(self, row: dict[str, Any], step: int) -> None:
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore").writerow(
                {k: _fmt(row.get(k)) for k in CSV_COLUMNS}
            )
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k.replace("_", "/", 1), v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
