"""Per-epoch metrics of a run: ``metrics.csv`` and TensorBoard events (written by rank 0 only).

The CSV is rewritten whole (atomically) from the run's history after every epoch, and the
history travels inside every checkpoint: after a kill at any moment, ``--resume`` rebuilds
a CSV that matches the checkpoint it resumes from, row for row. Its columns are whatever
the task reports (``train_*``, ``val_*``, ``best_*``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from ..io.files import atomic_write_text
from ..io.optional import MissingDependency, require

__all__ = ["RunLog", "read_metrics_csv", "metrics_csv_text"]

log = logging.getLogger("tdaf.train")


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv`` as floats (empty cells become NaN)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def metrics_csv_text(history: list[dict[str, Any]]) -> str:
    """The CSV of a run's history: one row per epoch, columns in order of first appearance."""
    columns: dict[str, None] = {}
    for row in history:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _fmt(row.get(k)) for k in columns} for row in history)
    return buf.getvalue()


class RunLog:
    """CSV + TensorBoard logger. ``history`` holds the rows of the epochs already done (from
    the checkpoint when resuming); TensorBoard events after ``global_step`` are dropped, so
    the logs describe the run that produced the weights."""

    def __init__(self, out: Path, history: list[dict[str, Any]] | None = None, global_step: int = 0,
                 tensorboard: bool = True) -> None:
        self.csv_path = out / "metrics.csv"
        if history:
            atomic_write_text(metrics_csv_text(history), self.csv_path)
        self.tb = None
        if tensorboard:
            try:
                writer = require("torch.utils.tensorboard", "tb", "TensorBoard logging (--tensorboard)")
            except MissingDependency as e:
                log.warning("%s; logging to metrics.csv only (--no-tensorboard silences this)", e)
            else:
                self.tb = writer.SummaryWriter(str(out / "tb"), purge_step=global_step if history else None)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def image(self, tag: str, picture: Any, step: int) -> None:
        """A ``(C, H, W)`` picture in [0, 1] (TensorBoard only)."""
        if self.tb is not None:
            self.tb.add_image(tag, picture, step)
            self.tb.flush()

    def epoch(self, row: dict[str, Any], history: list[dict[str, Any]], step: int) -> None:
        """Log the epoch ``row`` (the last of ``history``)."""
        atomic_write_text(metrics_csv_text(history), self.csv_path)
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
