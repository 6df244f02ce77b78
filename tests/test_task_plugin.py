"""A second task plugs into the engine without touching it.

The toy task below (regress the amount of ink in a handwritten digit) lives entirely in
this file: its data set, its model choice, its loss, and an evaluator whose main metric
is *smaller* is better. ``tdaf train --task toy_ink`` then trains, logs, checkpoints and
resumes it with the same trainer as classification.
"""

from __future__ import annotations

import csv
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdaf import create_model
from tdaf.cli.main import main
from tdaf.data import TransformedDataset, collate_skip, digits_pixels, subset_indices
from tdaf.data.registry import DatasetSpec, dataset_spec, register_dataset
from tdaf.engine.checkpoint import load_checkpoint
from tdaf.engine.distributed import all_reduce_sum
from tdaf.engine.task import BuiltModel, Evaluator, StepOutput, Task, TaskData, register_task

NAME = "toy_ink"


class _InkDigits:
    """Digits at 8x8 with their mean ink (0..1) as the target."""

    def __init__(self, split: str) -> None:
        images, _ = digits_pixels(split)
        self.x = torch.from_numpy(images[:, ::4, ::4].copy()).float().div(255)[:, None].expand(-1, 3, -1, -1)
        self.y = self.x.mean(dim=(1, 2, 3))

    def __len__(self) -> int:
        return len(self.y)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        return self.x[i], self.y[i], f"ink/{i}"


register_dataset(DatasetSpec("ink_digits", NAME, lambda split, data_dir: _InkDigits(split), needs_dir=False))


class _MAE(Evaluator):
    def __init__(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        err = (outputs.float() - targets).double()
        self.sums += torch.stack([err.abs().sum(), err.pow(2).sum(), torch.tensor(float(len(err)))])

    def gather(self) -> None:
        all_reduce_sum(self.sums)

    def compute(self) -> dict[str, float]:
        mae, mse, n = self.sums.tolist()
        return {"mae": mae / n, "loss": mse / n}


@register_task
class InkTask(Task):
    name = NAME
    main_metric = "mae"
    greater_is_better = False
    train_metrics = ("mae",)
    defaults = {"model": "resnet18_cifar", "data": "ink_digits"}

    def check_config(self, cfg: Any, source: str = "config") -> None:
        dataset_spec(cfg.data, NAME, f"{source}: data")

    def build_data(self, cfg: Any) -> TaskData:
        spec = dataset_spec(cfg.data, NAME)
        train, val = spec.open("train", None), spec.open("val", None)
        identity = nn.Identity()
        return TaskData(
            TransformedDataset(train, identity, cfg.seed, subset_indices(len(train), cfg.train_subset)),
            TransformedDataset(val, identity, cfg.seed, subset_indices(len(val), cfg.val_subset), seeded=False),
            collate_skip, {"data": cfg.data, "input_size": [3, 8, 8]}, in_memory=True, description="8x8 ink")

    def build_model(self, cfg: Any, meta: dict[str, Any]) -> BuiltModel:
        return BuiltModel(create_model(cfg.model, num_classes=1), cfg.model, {"num_classes": 1})

    def training_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        pred = model(inputs).squeeze(1).float()
        return StepOutput(F.mse_loss(pred, targets), len(targets), {"mae": (pred - targets).abs().sum().detach()})

    def predict(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs).squeeze(1)

    def evaluator(self) -> Evaluator:
        return _MAE()


def test_a_toy_task_trains_logs_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "ink"
    flags = ["--task", NAME, "--train-subset", "32", "--val-subset", "32", "--batch-size", "16", "--lr", "0.01",
             "--lr-batch", "16", "--schedule", "constant", "--no-progress", "--no-tensorboard", "--seed", "0"]
    assert main(["train", *flags, "--epochs", "2", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "3", "--no-progress"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", *flags, "--epochs", "3", "--out", str(straight)]) == 0

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_mae", "val_mae", "val_loss", "images_per_s",
                             "epoch_time_s", "skipped", "best_mae"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    maes = [float(r["val_mae"]) for r in rows]
    assert float(rows[-1]["best_mae"]) == min(maes)  # smaller is better for this task

    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(straight / "last.pt")
    assert a["task"] == NAME and a["config"]["data"] == "ink_digits" and a["main_metric"] == "mae"
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())  # exact resume
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == 1 + maes.index(min(maes))
